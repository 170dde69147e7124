"""What every system's no-op task does: append one line to a file the suite reads.

The same for all systems, whatever their worker model (coroutines, threads, a process pool, a
fork per job): one ``write`` of ``"<id> <start> <end>\\n"`` to a file opened with ``O_APPEND``,
which Linux keeps whole across threads and processes. The times are ``time.monotonic()``, one
clock for every process on the machine (``CLOCK_MONOTONIC``), so the suite can subtract the
time it enqueued a task from the time a worker started it. The cost, a few microseconds per
task, is the same for every system.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

PROBE_ENV = "BENCH_PROBE_FILE"

_fd: int | None = None
_fd_pid = 0


def record(i: int, start: float) -> None:
    """Called by the task with its id and the monotonic time it started."""
    global _fd, _fd_pid
    if _fd is None or _fd_pid != os.getpid():
        _fd = os.open(os.environ[PROBE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = os.getpid()
    os.write(_fd, f"{i} {start:.6f} {time.monotonic():.6f}\n".encode())


@dataclass
class ProbeReader:
    """The suite's side: reads the lines appended since the last call."""

    path: str
    starts: dict[int, float] = field(default_factory=dict)
    ends: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    measured: int = 0
    """Distinct measured tasks seen (ids >= 0); warm-up tasks have ids < 0."""
    warmups: int = 0
    _offset: int = 0
    _partial: bytes = b""

    def poll(self) -> int:
        """Read what was appended; returns how many records were new."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            i_text, start, end = line.split()
            i = int(i_text)
            if i in self.starts:
                self.duplicates += 1  # run twice (a redelivery): the first start counts
                continue
            self.starts[i] = float(start)
            self.ends[i] = float(end)
            if i < 0:
                self.warmups += 1
            else:
                self.measured += 1
        return len(lines)
