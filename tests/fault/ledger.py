"""Read the nodes' ledgers and check the delivery invariants of issue 3 against them.

A *run* is one execution of a handler: its ``start`` line, and its ``end`` line unless the process
died first. A run is *accepted* when Redis recorded its outcome: the job hash names the run's worker
and attempt. Every other run of a job is a duplicate, allowed only where a fault explains it.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Run:
    uid: str
    job: str
    tag: str
    seq: int
    worker: str
    attempt: int
    pid: int
    start: float
    end: float | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What Redis says about a job: its status and which run it accepted."""

    status: str
    worker: str
    attempts: int


def read_runs(paths: Iterable[Path]) -> list[Run]:
    """All runs in the ledgers, oldest start first. A torn last line (SIGKILL) is skipped."""
    starts: dict[tuple[str, str, int], dict[str, object]] = {}
    ends: dict[tuple[str, str, int], float] = {}
    for path in paths:
        if not path.exists():
            continue
        for text in path.read_text().splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            key = (line["uid"], line["worker"], line["attempt"])
            if line["ev"] == "start":
                starts[key] = line
            else:
                ends[key] = line["t"]
    runs = [
        Run(
            uid=str(s["uid"]),
            job=str(s["job"]),
            tag=str(s["tag"]),
            seq=int(s["seq"]),  # type: ignore[call-overload]
            worker=str(s["worker"]),
            attempt=int(s["attempt"]),  # type: ignore[call-overload]
            pid=int(s["pid"]),  # type: ignore[call-overload]
            start=float(s["t"]),  # type: ignore[arg-type]
            end=ends.get(key),
        )
        for key, s in starts.items()
    ]
    return sorted(runs, key=lambda r: r.start)


def by_uid(runs: Iterable[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        out[r.uid].append(r)
    return out


def check(
    runs: list[Run],
    expected: Mapping[str, tuple[str, int]],
    outcomes: Mapping[str, Outcome],
    *,
    faulty_pids: Collection[int] | None = (),
    max_runs: int = 2,
) -> None:
    """Assert the invariants for the tasks in ``expected`` (uid -> (tag, seq)).

    ``outcomes`` maps uid -> what Redis recorded. ``faulty_pids``: processes whose runs may be
    repeated elsewhere (killed, paused); ``None`` lets any process's runs repeat (Redis outages).
    """
    runs = [r for r in runs if r.uid in expected]
    per_uid = by_uid(runs)
    problems: list[str] = []

    # Nothing lost: every task completed, through exactly one run that Redis accepted.
    accepted: list[Run] = []
    for uid, (tag, seq) in expected.items():
        out = outcomes.get(uid)
        if out is None or out.status != "completed":
            problems.append(f"lost: {uid} (tag {tag} seq {seq}) is {out}")
            continue
        mine = [
            r for r in per_uid.get(uid, []) if (r.worker, r.attempt) == (out.worker, out.attempts)
        ]
        if len(mine) != 1 or mine[0].end is None:
            problems.append(f"{uid}: completed in Redis by {out}, but the ledger has {mine}")
            continue
        accepted.append(mine[0])

    # Duplicates only where a fault explains them, and a bounded number of them.
    for uid, rs in per_uid.items():
        if len(rs) > max_runs:
            problems.append(f"{uid} ran {len(rs)} times (at most {max_runs} allowed): {rs}")
        out = outcomes.get(uid)
        for r in rs:
            if out is not None and (r.worker, r.attempt) == (out.worker, out.attempts):
                continue
            if len(rs) > 1 and faulty_pids is not None and r.pid not in faulty_pids:
                problems.append(f"{uid} ran again, but its other run was on healthy pid {r.pid}")
        attempts = sorted(r.attempt for r in rs)
        if len(set(attempts)) != len(attempts):
            problems.append(f"{uid}: two runs saw the same attempt number: {rs}")

    # No two accepted runs of a tag overlap (one worker per tag), and they run in order.
    per_tag: dict[str, list[Run]] = defaultdict(list)
    for r in accepted:
        per_tag[r.tag].append(r)
    for tag, rs in per_tag.items():
        rs.sort(key=lambda r: r.start)
        for a, b in itertools.pairwise(rs):
            assert a.end is not None
            if b.start < a.end:
                problems.append(f"tag {tag}: seq {a.seq} and seq {b.seq} overlapped: {a} / {b}")
            if b.seq <= a.seq:
                problems.append(f"tag {tag}: accepted seq {b.seq} ran after seq {a.seq}")

    # Per-tag order of first attempts.
    firsts: dict[str, list[Run]] = defaultdict(list)
    for rs in per_uid.values():
        firsts[rs[0].tag].append(min(rs, key=lambda r: r.start))
    for tag, rs in firsts.items():
        seqs = [r.seq for r in sorted(rs, key=lambda r: r.start)]
        if seqs != sorted(seqs):
            problems.append(f"tag {tag}: first attempts out of order: {seqs}")

    assert not problems, "ledger invariants violated:\n  " + "\n  ".join(problems[:30])


def repeated(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """The uids that ran more than once."""
    return {uid: rs for uid, rs in by_uid(runs).items() if len(rs) > 1}
