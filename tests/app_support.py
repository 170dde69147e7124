"""Helpers for the tests of the example app, the FastAPI glue and the console command.

The example app reads its settings from the environment at import, as a user runs it; these
helpers turn a ``QueueSettings`` into that environment and import a fresh copy of the app.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import BaseModel, SecretStr

from affinity_queue import QueueSettings

EXAMPLE = "example_app.main"


def env_name(field: str) -> str:
    return QueueSettings.VARIABLES[field]


SETTINGS_ENV = frozenset(env_name(f) for f in QueueSettings.model_fields)


def env_for(settings: QueueSettings, **extra: str) -> dict[str, str]:
    """The environment variables that make ``QueueSettings()`` equal ``settings``."""
    env: dict[str, str] = {}
    for field in QueueSettings.model_fields:
        value = getattr(settings, field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, BaseModel):  # the per-tag maps, in their nested JSON form
            value = value.model_dump_json()
        env[env_name(field)] = str(value)
    env.update(extra)
    return env


def subprocess_env(settings: QueueSettings, **extra: str) -> dict[str, str]:
    """This process's environment with only ``settings`` (and ``extra``) for the queue."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    return {**env, **env_for(settings, **extra), "PYTHONUNBUFFERED": "1"}


def load_example(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> ModuleType:
    """A freshly imported ``example_app.main`` whose queues are configured by ``env`` only."""
    for name in SETTINGS_ENV - env.keys():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop(EXAMPLE, None)
    module = importlib.import_module(EXAMPLE)
    monkeypatch.delitem(sys.modules, EXAMPLE)  # the next test imports its own copy
    return module


@asynccontextmanager
async def serve(app: object, **client: object) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan (as uvicorn would) and give a client that talks to it in-process."""
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://example", **client
        ) as http:
            yield http


REPO = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("affinity-queue"))


@dataclass
class Process:
    """A child process of the test, its output in a file, ended by its own pid only."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, args: Sequence[str], env: Mapping[str, str], log: Path) -> Process:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, cwd=REPO, env=dict(env), stdout=out, stderr=subprocess.STDOUT
            )
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def exited(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (code := self.proc.poll()) is None:
            assert time.monotonic() < deadline, f"pid {self.pid} still running:\n{self.output()}"
            await asyncio.sleep(0.05)
        return code

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def uvicorn(port: int, env: Mapping[str, str], log: Path) -> Process:
    args = [sys.executable, "-m", "uvicorn", "example_app.main:app"]
    return Process.start([*args, "--host", "127.0.0.1", "--port", str(port)], env, log)


async def until_serving(process: Process, base_url: str, timeout_s: float = 30) -> None:
    """Wait until the app answers (its lifespan has started), or fail with its output."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:
        while True:
            assert process.proc.poll() is None, f"exited early:\n{process.output()}"
            try:
                if (await http.get("/queue/stats")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not serving:\n{process.output()}"
            await asyncio.sleep(0.1)
