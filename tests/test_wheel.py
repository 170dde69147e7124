"""The built wheel, installed into a fresh virtualenv, runs: its command, ``python -m``, and a task
through the worker command. Catches a file missing from the package (a Lua script, py.typed) or
from its metadata (LICENSE, the console script), which the editable install of the suite hides.

The fresh venv gets the wheel with ``--no-deps``; the dependencies come from this suite's venv
through a ``.pth`` line (a path only: the editable install's own ``.pth`` there is not read), so
the test needs no download beyond the build backend that ``pip wheel`` fetches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from affinity_queue import AffinityQueue, QueueSettings, Role, __version__

from .app_support import REPO

pytestmark = pytest.mark.timeout(120)

TASKS = """
from affinity_queue import AffinityQueue, JobContext, QueueSettings

aq = AffinityQueue(QueueSettings())


@aq.handler("ping")
async def ping(payload: dict, ctx: JobContext) -> dict:
    import affinity_queue

    return {"pong": payload["n"], "package": affinity_queue.__file__}
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)],
            check=True,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        # Building needs the build backend (hatchling) from a package index.
        pytest.skip(f"cannot build the wheel here: {getattr(e, 'stderr', '') or e}"[-500:])
    (built,) = out.glob("affinity_queue-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "suite_dependencies.pth").write_text(ours + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return root


def test_the_wheel_holds_the_package_files_and_metadata(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    info = f"affinity_queue-{__version__}.dist-info"
    assert wheel.name == f"affinity_queue-{__version__}-py3-none-any.whl"
    lua = {p.name for p in (REPO / "affinity_queue" / "lua").glob("*.lua")}
    assert lua and {Path(n).name for n in names if n.endswith(".lua")} == lua
    for name in (
        "affinity_queue/py.typed",
        "affinity_queue/__main__.py",
        f"{info}/licenses/LICENSE",
    ):
        assert name in names
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "affinity-queue = affinity_queue.cli:main" in entry_points
    assert not [n for n in names if n.startswith(("tests/", "example_app/", "bench/"))]


def test_the_installed_command_and_python_m_run(venv: Path, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "check": True}
    help_ = subprocess.run([venv / "bin" / "affinity-queue", "--help"], **run).stdout
    assert help_.startswith("usage: affinity-queue") and "worker" in help_
    version = subprocess.run([venv / "bin" / "python", "-m", "affinity_queue", "--version"], **run)
    assert version.stdout.strip() == f"affinity-queue {__version__}"
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import affinity_queue; print(affinity_queue.__file__)"],
        **run,
    ).stdout
    assert where.startswith(str(venv)), f"imported from {where}, not from the wheel"


async def test_a_task_runs_through_the_installed_worker_command(
    venv: Path, tmp_path: Path, make_settings
) -> None:
    settings: QueueSettings = make_settings()
    (tmp_path / "wheel_tasks.py").write_text(TASKS)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "REDIS_URL": settings.resolved_redis_url,
        "PENDING_QUEUE_NAME": settings.pending_queue_name,
        "WORKER_QUEUE_PREFIX": settings.worker_queue_prefix,
        "WORKER_STATE_PREFIX": settings.worker_state_prefix,
        "APP_ROLE": "BOTH",
    }
    log = tmp_path / "worker.log"
    proc = _spawn([venv / "bin" / "affinity-queue", "worker", "wheel_tasks:aq"], tmp_path, env, log)
    producer = AffinityQueue(settings.model_copy(update={"app_role": Role.PRODUCER}))
    try:
        async with producer:
            job = await producer.queue().add(
                {"type": "ping", "identifyTag": "w", "payload": {"n": 7}}
            )
            result = await producer.queue().wait_for(job.id, timeout_s=30)
        assert isinstance(result, dict) and result["pong"] == 7
        assert str(result["package"]).startswith(str(venv)), result
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert "affinity-queue: stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _spawn(
    argv: list[Path | str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
