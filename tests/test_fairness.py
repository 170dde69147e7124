"""Fairness between tags (issue 17): weighted shares, rate limits, bad input, weights across a
leader change. The shares are pinned on the scripts driven by hand (deterministic), the rate limit
through the real runtime (it is a matter of time)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from affinity_queue import AffinityQueue, InvalidTaskError, QueueSettings
from affinity_queue.keys import tag_id
from affinity_queue.lua import AddOptions, RawJob, new_token

from .engine import Engine
from .support import wait_for

SettingsFactory = Callable[..., QueueSettings]
WORKERS = ("w1", "w2")
SHARES = {"A": 1, "B": 2, "C": 3}


async def run_batches(
    engine: Engine, batches: int, workers: tuple[str, ...] = WORKERS
) -> list[str]:
    """Dispatch, then let every worker run its whole queue (one batch), until ``batches`` batches
    ran; the tag of each batch, in the order they finished. The batches run with the queue
    paused, so that a worker's advance places nothing when it frees and each round's placing is
    one dispatch: the shares pinned here are dispatch's, round by round."""
    ran: list[str] = []
    while len(ran) < batches:
        assert await engine.dispatch() > 0, "nothing placed while every tag had work"
        async with engine.backlog():
            for w in workers:
                job: RawJob | None = await engine.take(w)
                if job is None:
                    continue
                tags = set()
                while job is not None:
                    tags.add(job.identify_tag)
                    job = await engine.take(w, job)
                (tag,) = tags
                ran.append(tag)
    return ran[:batches]


def assert_shares(ran: list[str], tolerance: float) -> None:
    counts = Counter(ran)
    total, weights = len(ran), sum(SHARES.values())
    for tag, weight in SHARES.items():
        expected = total * weight / weights
        assert abs(counts[tag] - expected) <= tolerance * expected, (counts, tolerance)


async def backlogs(
    engine: Engine, n: int = 3000, options: dict[str, AddOptions] | None = None
) -> None:
    """``n`` tasks per tag, added in turns of 100 so that no tag starts far ahead."""
    for _ in range(n // 100):
        async with engine.backlog():
            for tag in SHARES:
                await engine.add(tag, 100, (options or {}).get(tag))


async def test_tags_share_the_workers_in_proportion_to_their_weights(engine: Engine) -> None:
    """Weights 1:2:3, two workers that each tag may use: over 600 batches the tasks started are
    within 5 % of 1:2:3, and within 15 % in every window of 100 batches."""
    weights = {tag_id(t): float(w) for t, w in SHARES.items()}
    await engine.elect(max_batch=5, concurrency=2, weights=weights)
    await engine.register(*WORKERS)
    await backlogs(engine)
    ran = await run_batches(engine, 600)
    assert_shares(ran, 0.05)
    for lo in range(0, 600, 100):
        assert_shares(ran[lo : lo + 100], 0.15)


async def test_shares_hold_in_every_window_when_each_tag_may_use_every_worker(
    engine: Engine,
) -> None:
    """Four workers, each tag allowed on all four: a tag is charged its turn when it takes a
    worker, so free workers go round the tags instead of all to the tag at the head of the line
    (which made a weight-1 tag's batches come in lumps of four: 20 % off in a window)."""
    workers = ("w1", "w2", "w3", "w4")
    weights = {tag_id(t): float(w) for t, w in SHARES.items()}
    await engine.elect(max_batch=5, concurrency=4, weights=weights)
    await engine.register(*workers)
    await backlogs(engine)
    ran = await run_batches(engine, 600, workers)
    assert_shares(ran, 0.05)
    for lo in range(0, 600, 100):
        assert_shares(ran[lo : lo + 100], 0.15)


async def test_free_workers_go_round_the_waiting_tags(engine: Engine) -> None:
    """A tag allowed on every worker takes one of four free workers while three other tags wait,
    although its tasks are the oldest; alone, it takes all four, each a batch of its next tasks
    in order."""
    workers = ("w1", "w2", "w3", "w4")
    await engine.elect(max_batch=5, concurrency=4)
    await engine.register(*workers)
    async with engine.backlog():
        flood = await engine.add("A", 40)
        for tag in "BCD":
            await engine.add(tag, 5)
    assert await engine.dispatch() == 20
    firsts = [await engine.take(w) for w in workers]
    assert sorted(j.identify_tag for j in firsts if j) == ["A", "B", "C", "D"]
    async with engine.backlog():  # each worker runs its batch out; dispatch places the next
        for w, job in zip(workers, firsts, strict=True):
            while job is not None:
                job = await engine.take(w, job)
    assert await engine.dispatch() == 20
    started = [await engine.take(w) for w in workers]
    assert [j.identify_tag for j in started if j] == ["A"] * 4
    assert sorted(flood.index(j.id) for j in started if j) == [5, 10, 15, 20]


async def test_a_weight_given_to_add_counts_for_its_tasks(engine: Engine) -> None:
    """The weight of add wins over the leader's (here the default, 1) for the tasks it added."""
    await engine.elect(max_batch=5, concurrency=2)
    await engine.register(*WORKERS)
    await backlogs(engine, options={t: AddOptions(weight=float(w)) for t, w in SHARES.items()})
    assert_shares(await run_batches(engine, 600), 0.05)


async def test_weights_survive_a_leader_change(engine: Engine) -> None:
    """A new leader with the same settings keeps the weights (the per-tag settings are not even
    sent again) and the shares go on."""
    weights = {tag_id(t): float(w) for t, w in SHARES.items()}
    await engine.elect(max_batch=5, concurrency=2, weights=weights)
    await engine.register(*WORKERS)
    await backlogs(engine)
    before = await run_batches(engine, 300)
    assert await engine.scripts.resign("token")
    fence = await engine.scripts.elect(
        "another", 30_000, "node-2", "host", 2, engine_config(max_batch=5, weights=weights)
    )
    assert fence > engine.fence
    engine.fence = fence
    assert await engine.redis.hgetall(engine.keys.queue_prefix + "weights") == {
        t: repr(w) for t, w in weights.items()
    }
    after = await run_batches(engine, 300)
    assert_shares(after, 0.05)
    assert_shares(before + after, 0.05)


async def test_weights_changed_by_a_new_leader_mid_batch_apply_from_the_next_turns(
    engine: Engine,
) -> None:
    """A leader with new weights (1:2:3 becomes 3:2:1) takes over while a worker is in the
    middle of a batch: that batch runs to its end, the next 300 batches follow the new weights,
    and each tag's finished jobs are exactly its first ones in the order they were added."""
    await engine.elect(
        max_batch=5, concurrency=2, weights={tag_id(t): w for t, w in SHARES.items()}
    )
    await engine.register(*WORKERS)
    ids: dict[str, list[str]] = {tag: [] for tag in SHARES}
    async with engine.backlog():
        for _ in range(30):
            for tag in SHARES:
                ids[tag] += await engine.add(tag, 100)
    await run_batches(engine, 150)
    assert await engine.dispatch() > 0
    await engine.scripts.pause(new_token(), True)  # the batches run out; dispatch places next
    job = await engine.take("w1")
    assert job is not None
    middle = [job]
    assert await engine.scripts.resign("token")
    new_weights = {t: 4 - w for t, w in SHARES.items()}
    engine.fence = await engine.scripts.elect(
        "another",
        30_000,
        "node-2",
        "host",
        2,
        engine_config(max_batch=5, weights={tag_id(t): float(w) for t, w in new_weights.items()}),
    )
    while (job := await engine.take("w1", job)) is not None:
        middle.append(job)
    assert len({j.identify_tag for j in middle}) == 1 and 1 < len(middle) <= 5
    job = await engine.take("w2")  # w2's batch, placed before the change
    while job is not None:
        job = await engine.take("w2", job)
    await engine.scripts.pause(new_token(), False)
    after = Counter(await run_batches(engine, 300))
    for tag, weight in new_weights.items():
        expected = 300 * weight / 6
        assert abs(after[tag] - expected) <= 0.05 * expected, after
    for tag, tag_ids in ids.items():
        statuses = [(await engine.job(i))["status"] for i in tag_ids]
        finished = statuses.count("completed")
        assert statuses == ["completed"] * finished + ["pending"] * (len(tag_ids) - finished), tag


def engine_config(**values: Any) -> Any:
    from affinity_queue.lua import TermConfig

    return TermConfig(concurrency=2, **values)


async def test_weight_one_everywhere_keeps_the_plain_turns(engine: Engine) -> None:
    """With no weight set, every turn is a fresh order number, as before weights existed, and
    no weighted turn is indexed."""
    await engine.elect(max_batch=5, concurrency=2)
    await engine.register(*WORKERS)
    await backlogs(engine, 1000)
    ran = await run_batches(engine, 60)
    assert set(Counter(ran).values()) == {20}, Counter(ran)
    turns = await engine.redis.hgetall(engine.keys.queue_prefix + "turns")
    assert turns and all(v.isdigit() for v in turns.values())
    assert not await engine.redis.exists(engine.keys.queue_prefix + "vturns")


async def test_two_weighted_turns_computed_alike_stay_apart_in_release_order(
    engine: Engine,
) -> None:
    """X and Y (weight 2 each, batches of 1) release so that both compute the same turn: Y,
    released second, goes right after X, never at the same score (a tie would be decided by the
    tags' bytes)."""
    await engine.elect(max_batch=1, weights={tag_id("X"): 2.0, tag_id("Y"): 2.0})
    await engine.register("w1", "w2")
    async with engine.backlog():
        await engine.add("X", 10)
        await engine.add("Y", 10)

    async def release(tag: str) -> None:
        """The worker bound to ``tag`` runs its job and gives the tag up."""
        for w in ("w1", "w2"):
            if (await engine.worker_state(w)).get("tag") == tag:
                job = await engine.take(w)
                assert job is not None and await engine.take(w, job) is None
                return
        raise AssertionError(f"no worker is bound to {tag}")

    # Y then X give their tags up (first turns 20.5 and 21.5: a line of one, then of two), then
    # X at order 23 and Y at 24: both compute 22.25 (21.5 + 1.5 / 2 and 20.5 + 3.5 / 2).
    assert await engine.dispatch() == 2
    async with engine.backlog():  # the releases alone: dispatch places after each pair
        await release("Y")
        await release("X")
    assert await engine.dispatch() == 2
    async with engine.backlog():
        await release("X")
        await release("Y")
    turns = await engine.redis.hgetall(engine.keys.queue_prefix + "turns")
    x, y = float(turns[tag_id("X")]), float(turns[tag_id("Y")])
    assert x == 22.25 and x < y < int(x) + 1, (x, y)
    ready = await engine.redis.zrange(engine.keys.ready_new, 0, -1, withscores=True)
    assert ready == [(tag_id("X"), x), (tag_id("Y"), y)]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "IDENTIFY_TAG_WEIGHT",
            '{"tenant-a": 0}',
            "weight of tag 'tenant-a' must be a number above 0",
        ),
        ("IDENTIFY_TAG_WEIGHT", '{"tenant-a": -2}', "got -2"),
        ("IDENTIFY_TAG_WEIGHT", '{"tenant-a": "heavy"}', "got 'heavy'"),
        ("IDENTIFY_TAG_WEIGHT", "0", "weight of every tag (default)"),
        ("IDENTIFY_TAG_WEIGHT", "three", "must be a number, or JSON"),
        ("IDENTIFY_TAG_RATE", '{"tenant-b": 0}', "rate limit of tag 'tenant-b'"),
        ("IDENTIFY_TAG_RATE", '{"tenant-b": -5}', "got -5"),
        ("IDENTIFY_TAG_RATE", '{"default": 0}', "rate limit of every tag (default)"),
    ],
)
def test_bad_weights_and_rates_name_the_tag_and_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as e:
        QueueSettings()
    assert variable in str(e.value) and message in str(e.value)


def test_weights_and_rates_take_every_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTIFY_TAG_WEIGHT", '{"default": 0.5, "weights": {"default": 3}}')
    monkeypatch.setenv("IDENTIFY_TAG_RATE", "50")
    s = QueueSettings()
    assert (s.identify_tag_weight.for_tag("default"), s.identify_tag_weight.for_tag("x")) == (
        3,
        0.5,
    )
    assert s.identify_tag_rate.for_tag("x") == 50


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf"), "2", True])
async def test_add_refuses_a_bad_weight_naming_the_tag_and_the_value(
    make_settings: SettingsFactory, weight: Any
) -> None:
    aq = AffinityQueue(make_settings(app_role="PRODUCER"))
    async with aq:
        with pytest.raises(InvalidTaskError) as e:
            await aq.queue().add({"type": "t", "identifyTag": "tenant-c"}, weight=weight)
        assert "tenant-c" in str(e.value) and repr(weight) in str(e.value)
        with pytest.raises(InvalidTaskError, match="tags 'a', 'b'"):
            tasks = [{"type": "t", "identifyTag": t} for t in ("a", "b")]
            await aq.queue().add_bulk(tasks, weight=weight)
        assert (await aq.queue().get_queue_stats()).pending == 0


async def test_a_rate_limited_tag_starts_at_its_rate_while_others_use_the_rest(
    make_settings: SettingsFactory,
) -> None:
    """L limited to 50 tasks/s starts at 50/s ± 5 % (past its first bucketful, a second of
    tokens), while two unlimited tags keep the other workers busy."""
    settings = make_settings(
        worker_count=3,
        max_batch_size=10,
        identify_tag_concurrency=3,
        identify_tag_rate={"L": 50},
    )
    aq = AffinityQueue(settings)
    starts: dict[str, list[float]] = {"L": [], "F": [], "G": []}

    @aq.handler("t")
    async def handle(payload: Any, ctx: Any) -> None:
        starts[ctx.identify_tag].append(time.monotonic())
        await asyncio.sleep(0.002)

    q = aq.queue()
    for tag in starts:
        await q.add_bulk({"type": "t", "identifyTag": tag} for _ in range(2000))
    async with aq:
        await wait_for(
            lambda: asyncio.sleep(0, len(starts["L"])),
            lambda n: n >= 300,
            what="300 tasks of L started",
            timeout_s=20,
        )
    # Well past the first bucketful (50 tokens at once, whose starts spread over the workers).
    ls = starts["L"][100:300]
    rate = (len(ls) - 1) / (ls[-1] - ls[0])
    assert 47.5 <= rate <= 52.5, f"L started {rate:.1f} tasks/s"
    window = (ls[0], ls[-1])
    others = sum(window[0] <= t <= window[1] for tag in "FG" for t in starts[tag])
    assert others > 5 * len(ls), f"the other tags started only {others} meanwhile"


async def test_a_rate_limited_tag_is_held_until_its_next_token_and_others_go_on(
    engine: Engine,
) -> None:
    """L at 5 tasks/s: a bucketful (a batch, 10) is placed, then L waits outside the ready sets
    while M is placed, and dispatch reports when L's next token is due (the scheduler's wait)."""
    await engine.elect(max_batch=10, rates={tag_id("L"): 5.0})
    await engine.register("w1", "w2")
    async with engine.backlog():
        await engine.add("L", 30)
    assert await engine.dispatch() == 10
    async with engine.backlog():
        await engine.add("M", 3)
    placed, _, next_due_ms = await engine.scripts.dispatch(engine.fence, 100)
    assert placed == 3  # M on the other worker; L waits for a token
    assert 150 <= next_due_ms <= 200, next_due_ms  # one token every 200 ms
    ready = {*await engine.redis.zrange(engine.keys.ready_new, 0, -1)}
    ready |= {*await engine.redis.zrange(engine.keys.ready_bound, 0, -1)}
    assert tag_id("L") not in ready


async def test_a_cold_tag_waits_for_at_most_the_floods_workers_batches(engine: Engine) -> None:
    """The bound's count (README, Fairness): once cold tags arrive, a weight-1 flood allowed on
    both workers starts at most two more batches before the last of them starts."""
    await engine.elect(max_batch=5, limits={tag_id("flood"): 2})
    await engine.register("w1", "w2")
    async with engine.backlog():
        await engine.add("flood", 500)
    await run_batches(engine, 6)
    async with engine.backlog():
        for i in range(3):
            await engine.add(f"cold-{i}", 2)
    ran = await run_batches(engine, 8)
    last_cold = max(i for i, tag in enumerate(ran) if tag.startswith("cold"))
    assert {t for t in ran if t.startswith("cold")} == {"cold-0", "cold-1", "cold-2"}
    assert ran[:last_cold].count("flood") <= 2, ran
