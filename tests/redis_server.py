"""Start and stop private redis-server processes for tests (never the shared one on 6379)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

PORTS = range(10_000, 22_768)
"""Below Linux's ephemeral range (32768 up), and so is a cluster bus port (+10000): no test
client's outgoing connection can take a server's port between the check and the server's bind,
as one took a cluster node's in CI."""


_handed_out: set[int] = set()
"""Ports already given (bus ports included): servers started together, such as a cluster's six
nodes, bind only after all were chosen, so a bind check alone could give two of them one port."""


def free_port(*, bus_offset: int | None = None) -> int:
    """A loopback port that is free now and not given before, and its ``+bus_offset`` port too
    when given."""
    while True:
        port = random.choice(PORTS)
        wanted = (port,) if bus_offset is None else (port, port + bus_offset)
        if _handed_out.intersection(wanted):
            continue
        try:
            for p in wanted:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        _handed_out.update(wanted)
        return port


class ServerProcess:
    """Stopping a server started as ``proc`` with its own ``dir``: shared by every kind of
    server the tests start (plain, replicas, Sentinels, TLS)."""

    proc: subprocess.Popen[bytes] | None
    dir: Path

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited 10 s later."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class RedisServer(ServerProcess):
    """One redis-server on a free loopback port, with its own data directory."""

    appendonly: bool = False
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aq-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
            finally:
                client.close()
        return self
