"""Worker processes: started with the system's own command, measured, and stopped.

Each command starts in a session of its own, so that its process group holds everything it
forks (a worker pool, a fork per job) and can be stopped whole by its id; nothing else on the
machine is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..report import ROOT

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class WorkerDiedError(RuntimeError):
    pass


@dataclass
class WorkerGroup:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    @classmethod
    def spawn(cls, commands: list[list[str]], env: dict[str, str], log_dir: Path) -> WorkerGroup:
        procs, logs = [], []
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        for k, command in enumerate(commands):
            log = log_dir / f"worker-{len(list(log_dir.glob('worker-*')))}-{k}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=full_env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            logs.append(log)
        return cls(procs, logs)

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise WorkerDiedError(
                    f"worker {proc.args!r} exited with {proc.returncode}; its log ends:\n{tail}"
                )

    def cpu_s(self) -> float:
        """CPU seconds used so far by every process in the groups, and by the children they
        have reaped (a fork per job shows there)."""
        groups = {p.pid for p in self.procs}
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state): pgrp is field 5; utime..cstime are fields 14-17
            if int(fields[2]) in groups:
                total += sum(int(x) for x in fields[11:15])
        return total / CLOCK_TICKS

    async def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM to each group (a graceful stop), then SIGKILL to whatever is left in it."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, max(0.0, deadline - loop.time()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
