"""redis-server processes in the shapes production uses: replicas, Sentinels, TLS. Each on free
loopback ports with its own temp dir, stopped and removed by ``cleanup``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ..redis_server import ServerProcess, free_port

MASTER_NAME = "aq-master"


@dataclass
class Proc(ServerProcess):
    """One redis-server (or Sentinel) started with ``args``; ``port`` answers plain PING."""

    args: list[str]
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aq-rp-")))
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        args = [binary, *self.args, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, f"redis-server on port {self.port} did not start", self)
        return self

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def wait_until(ok: object, timeout_s: float, message: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{message}: the process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)


def redis_proc(*extra: str) -> Proc:
    return Proc(["--save", "", "--appendonly", "no", *extra]).start()


@dataclass
class SentinelSet:
    """A master, one replica and three Sentinels (quorum 2) watching ``MASTER_NAME``."""

    servers: list[Proc]
    sentinels: list[Proc]

    @classmethod
    def start(cls, down_after_ms: int = 2000) -> SentinelSet:
        master = redis_proc()
        replica = redis_proc("--replicaof", "127.0.0.1", str(master.port))
        made = cls([master, replica], [])
        try:
            for _ in range(3):
                s = Proc([])
                conf = s.dir / "sentinel.conf"
                conf.write_text(
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                    f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                    f"sentinel parallel-syncs {MASTER_NAME} 1\n"
                )
                s.args = [str(conf), "--sentinel"]
                made.sentinels.append(s.start())
            made.wait_settled()
        except BaseException:
            made.cleanup()
            raise
        return made

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def master_port(self) -> int:
        with self.sentinels[0].client() as c:
            _, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def master_ports(self) -> set[int]:
        """The master each Sentinel names (one port once they agree)."""
        ports = set()
        for s in self.sentinels:
            with s.client() as c:
                ports.add(int(c.sentinel_master(MASTER_NAME)["port"]))
        return ports

    def config_epoch(self) -> int:
        """The highest failover epoch any Sentinel has seen (one more per failover)."""
        epochs = []
        for s in self.sentinels:
            with s.client() as c:
                epochs.append(int(c.sentinel_master(MASTER_NAME)["config-epoch"]))
        return max(epochs)

    def server(self, port: int) -> Proc:
        return next(s for s in self.servers if s.port == port)

    def wait_settled(self, timeout_s: float = 30) -> None:
        """Until every Sentinel agrees on the master, knows the other two and sees a replica
        that is in sync (a failover needs all three)."""

        def settled() -> bool:
            try:
                ports = set()
                for s in self.sentinels:
                    with s.client() as c:
                        info = c.sentinel_master(MASTER_NAME)
                        if info["is_sdown"] or int(info["num-other-sentinels"]) < 2:
                            return False
                        if int(info["num-slaves"]) < 1:
                            return False
                        ports.add(int(info["port"]))
                if len(ports) != 1:
                    return False
                with self.server(ports.pop()).client() as c:
                    replication = c.info("replication")
                return any(
                    isinstance(v, dict) and v.get("state") == "online"
                    for k, v in replication.items()
                    if k.startswith("slave")
                )
            except (redis.RedisError, StopIteration, KeyError):
                return False

        wait_until(settled, timeout_s, "the Sentinels did not settle")

    def cleanup(self) -> None:
        for p in [*self.sentinels, *self.servers]:
            p.cleanup()
