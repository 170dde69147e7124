"""The console command's argument handling (the running command is in test_processes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from affinity_queue import cli

from .app_support import CONSOLE_SCRIPT, REPO, SETTINGS_ENV


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("example_app.main", "MODULE:ATTRIBUTE"),
        ("no_such_module:aq", "cannot import 'no_such_module'"),
        ("example_app.main:missing", "has no attribute 'missing'"),
        ("example_app.main:app", "is a FastAPI, not an AffinityQueue"),
    ],
)
def test_bad_targets_exit_2_with_a_message(target: str, says: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts --app-dir first
    monkeypatch.setenv("REDIS_URL", "memory://")
    assert cli.main(["worker", target, "--app-dir", str(REPO)]) == cli.EXIT_USAGE
    assert says in capsys.readouterr().err
    sys.modules.pop("example_app.main", None)


def test_help_is_the_installed_command() -> None:
    out = subprocess.run(
        [CONSOLE_SCRIPT, "worker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: affinity-queue worker")
    assert "SIGTERM" in out and "APP_ROLE" in out


def test_stats_prints_one_json_line_per_queue(redis_server, tmp_path) -> None:
    env = {"REDIS_URL": redis_server.url, "PENDING_QUEUE_NAME": f"cli-{tmp_path.name}"}
    result = subprocess.run(
        [CONSOLE_SCRIPT, "stats", "example_app.main:aq", "--json"],
        cwd=REPO,
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    stats = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["queue"] for s in stats] == ["default", "high-priority"]
    assert all(s["pending"] == 0 and s["workers"] == [] for s in stats)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("import myt\n", "No module named 'myt'"),
        ("raise ValueError('bad config in user code')\n", "bad config in user code"),
        ("import json\njson.loads('{')\n", "JSONDecodeError"),
    ],
)
def test_errors_in_the_users_module_show_its_traceback(
    source: str, says: str, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = f"mytasks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(source)
    try:
        code = cli.main(["worker", f"{module}:aq", "--app-dir", str(tmp_path)])
    finally:
        sys.modules.pop(module, None)
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR, err
    assert "Traceback (most recent call last)" in err and says in err
    assert f'{module}.py", line' in err  # the user's own line is shown
    assert "--app-dir" not in err


def test_a_package_that_is_not_found_is_a_usage_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["stats", "nopkg_x.tasks:aq", "--app-dir", str(tmp_path)]) == cli.EXIT_USAGE
    assert "cannot import 'nopkg_x.tasks'" in capsys.readouterr().err


def test_a_bad_setting_names_the_variable_without_a_traceback(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("REDIS_URL", "localhost:6379")
    sys.modules.pop("example_app.main", None)
    try:
        code = cli.main(["stats", "example_app.main:aq", "--app-dir", str(REPO)])
    finally:
        sys.modules.pop("example_app.main", None)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "REDIS_URL" in err and "Traceback" not in err
