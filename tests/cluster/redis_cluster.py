"""A real Redis Cluster for tests: 3 masters and 3 replicas on free loopback ports.

Built the way an operator builds one: ``redis-server --cluster-enabled yes`` six times, then
``redis-cli --cluster create --cluster-replicas 1 --cluster-yes``. A short ``cluster-node-timeout``
makes a killed master's replica take over within a few seconds.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ..redis_server import free_port

NODE_TIMEOUT_MS = 1000
MASTERS = 3
"""Each with one replica."""


BUS_OFFSET = 10_000
"""Redis Cluster's bus listens on the node's port + 10000."""


def _run(*args: str, timeout_s: float = 60) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{output}")
    return done.stdout


@dataclass
class ClusterNode:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    _client: redis.Redis | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """A plain client of this node alone (no redirections followed)."""
        if self._client is None:
            self._client = redis.Redis(
                port=self.port, decode_responses=True, socket_timeout=5, socket_connect_timeout=1
            )
        return self._client

    def start(self) -> None:
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--repl-diskless-sync-delay", "0",  # replicas in sync at once, not after 5 s
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self) -> bool:
        """PING answered; a process that exited (its port taken) raises with its log's end."""
        if not self.alive():
            log = self.dir / "redis.log"
            tail = log.read_text()[-800:] if log.exists() else ""
            raise RuntimeError(f"redis-server on {self.port} exited:\n{tail}")
        return bool(self.client().ping())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class RedisCluster:
    """Six nodes; ``start()`` returns once every slot is served and all nodes agree."""

    nodes: list[ClusterNode] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aq-cluster-")))

    @property
    def url(self) -> str:
        """The ``REDIS_URL`` of the cluster: every node as a seed."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def start(self) -> RedisCluster:
        for i in range(MASTERS * 2):
            node_dir = self.dir / f"n{i}"
            node_dir.mkdir()
            node = ClusterNode(free_port(bus_offset=BUS_OFFSET), node_dir)
            node.start()
            self.nodes.append(node)
        for node in self.nodes:
            self._wait(lambda n=node: n.answers(), f"node {node.port} to start")
        _run(
            "redis-cli", "--cluster", "create", *(n.address for n in self.nodes),
            "--cluster-replicas", "1", "--cluster-yes",
        )  # fmt: skip
        self.wait_healthy()
        self._wait(self._replicas_in_sync, "every replica to finish its first sync")
        return self

    def _replicas_in_sync(self) -> bool:
        """A replica that has not synced yet cannot take over: a kill must find them synced."""
        infos = [n.client().info("replication") for n in self.live()]
        replicas = [i for i in infos if i["role"] == "slave"]
        return len(replicas) == MASTERS and all(
            i["master_link_status"] == "up" and not i["master_sync_in_progress"] for i in replicas
        )

    def _wait(self, cond: object, what: str, limit_s: float = 30) -> float:
        start = time.monotonic()
        while True:
            try:
                if cond():  # type: ignore[operator]
                    return time.monotonic() - start
            except redis.RedisError:
                pass
            if time.monotonic() - start > limit_s:
                raise RuntimeError(f"timed out after {limit_s} s waiting for {what}")
            time.sleep(0.05)

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive()]

    def wait_healthy(self, limit_s: float = 30) -> float:
        """Every live node says ``cluster_state:ok`` and sees all slots assigned."""

        def ok() -> bool:
            for n in self.live():
                info = n.client().cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
            return True

        return self._wait(ok, "the cluster to be healthy", limit_s)

    def wait_failover(self, slot: int, dead: ClusterNode, limit_s: float = 30) -> float:
        """Wait until a replica of ``dead`` serves ``slot`` and the cluster is healthy again;
        return the seconds it took."""
        try:
            took = self._wait(lambda: self.owner(slot) is not dead, "a takeover", limit_s)
        except RuntimeError as e:
            views = {n.port: n.client().cluster("nodes") for n in self.live()}
            logs = {n.port: (n.dir / "redis.log").read_text()[-1500:] for n in self.live()}
            raise RuntimeError(f"{e}\nviews: {views}\nlogs: {logs}") from None
        return took + self.wait_healthy(limit_s)

    def owner(self, slot: int) -> ClusterNode:
        """The master that serves ``slot``, as a live node sees it."""
        for n in self.live():
            for start, end, master, *_ in n.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return self.by_port(int(master[1]))
        raise LookupError(f"slot {slot} is not served")

    def by_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[ClusterNode]:
        out = []
        for n in self.live():
            if n.client().execute_command("ROLE")[0] == "master":
                out.append(n)
        return out

    def node_id(self, node: ClusterNode) -> str:
        return str(node.client().execute_command("CLUSTER", "MYID"))

    def move_slot(
        self, slot: int, target: ClusterNode, *, batch: int = 10, pause_s: float = 0.0
    ) -> int:
        """Move ``slot`` to ``target`` the way ``redis-cli --cluster reshard`` moves each slot,
        ``pause_s`` between batches (a slower network: the slot stays open longer); returns the
        number of keys moved."""
        source = self.owner(slot)
        src, dst = source.client(), target.client()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        for node in (target, source, *(m for m in self.masters() if m not in (source, target))):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))
        return moved

    def cleanup(self) -> None:
        for n in self.nodes:
            n.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
