"""Dramatiq with its Redis broker: ``dramatiq bench.peers.dramatiq --processes 1 --threads 20``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from . import BIN, WORKERS, SyncSystem, redis_url
from .probe import record

broker = RedisBroker(url=redis_url())  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor
def noop(i: int) -> None:
    record(i, time.monotonic())


class Adapter(SyncSystem):
    name = "Dramatiq"
    distributions = ("dramatiq",)
    settings = (
        f"`--processes 1 --threads {WORKERS}`; Redis broker, default middleware, queue `default`"
    )
    keyed = "pipelines (`pipeline`, results ignored)"
    processes = f"1 process, {WORKERS} threads"

    def worker_command(self, index: int) -> list[str]:
        return [
            str(BIN / "dramatiq"), __name__, "--processes", "1", "--threads", str(WORKERS),
        ]  # fmt: skip

    def send(self, i: int) -> None:
        noop.send(i)

    async def add_keyed(self, chains: Sequence[Sequence[int]]) -> None:
        for ids in chains:
            messages = [noop.message_with_options(args=(i,), pipe_ignore=True) for i in ids]
            dramatiq.pipeline(messages).run()  # type: ignore[no-untyped-call]
