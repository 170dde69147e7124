"""Bad tasks and bad settings are refused up front, with the field named, and nothing written."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from affinity_queue import (
    AffinityQueue,
    InvalidTaskError,
    JobStatus,
    PayloadTooLargeError,
    QueueSettings,
    Role,
    Task,
)

from .support import drained, snapshot

GOOD = {"type": "t", "identifyTag": "tag", "payload": {"n": 1}}

BAD_TASKS: list[tuple[str, Any, str]] = [
    # (case, task, a field name the message must contain)
    ("empty type", {"type": "", "identifyTag": "tag"}, "type"),
    ("empty tag", {"type": "t", "identifyTag": ""}, "identifyTag"),
    ("empty snake_case tag", {"type": "t", "identify_tag": ""}, "identify_tag"),
    ("missing type", {"identifyTag": "tag", "payload": 1}, "type"),
    ("missing tag", {"type": "t", "payload": 1}, "identifyTag"),
    ("type not a string", {"type": 7, "identifyTag": "tag"}, "type"),
    ("tag not a string", {"type": "t", "identifyTag": ["tag"]}, "identifyTag"),
    ("tag null", {"type": "t", "identifyTag": None}, "identifyTag"),
    ("payload a set", {"type": "t", "identifyTag": "tag", "payload": {1, 2}}, "payload"),
    ("payload an object", {"type": "t", "identifyTag": "tag", "payload": object()}, "payload"),
    (
        "payload bytes inside",
        {"type": "t", "identifyTag": "tag", "payload": {"b": b"x"}},
        "payload",
    ),
    ("payload NaN", {"type": "t", "identifyTag": "tag", "payload": math.nan}, "payload"),
    ("payload int keys", {"type": "t", "identifyTag": "tag", "payload": {1: "x"}}, "payload"),
    ("tag of 5 MB", {"type": "t", "identifyTag": "x" * 5_000_000}, "identifyTag"),
    ("tag one byte too long", {"type": "t", "identifyTag": "é" * 512 + "x"}, "identifyTag"),
    ("type too long", {"type": "t" * 257, "identifyTag": "tag"}, "type"),
    ("tag only whitespace", {"type": "t", "identifyTag": " \t\n"}, "identifyTag"),
    ("type only whitespace", {"type": "  ", "identifyTag": "tag"}, "type"),
    ("tag lone surrogate", {"type": "t", "identifyTag": "a\ud800"}, "identifyTag"),
    ("type lone surrogate", {"type": "\udfff", "identifyTag": "tag"}, "type"),
    ("payload lone surrogate", {**GOOD, "payload": {"s": "\ud800"}}, "payload"),
    ("payload surrogate key", {**GOOD, "payload": {"\ud800": 1}}, "payload"),
    ("unknown field", {**GOOD, "delaySeconds": 5}, "delaySeconds"),
    ("not a mapping", "t:tag", "task"),
    ("a list", ["t", "tag"], "task"),
    ("None", None, "task"),
]


FAR = datetime.now(UTC) + timedelta(days=365 * 11)

BAD_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    # (case, keyword arguments of add / add_bulk, the field named)
    ("delay nan", {"delay_s": math.nan}, "delay_s"),
    ("delay inf", {"delay_s": math.inf}, "delay_s"),
    ("delay -inf", {"delay_s": -math.inf}, "delay_s"),
    ("delay overflowing", {"delay_s": 1e300}, "delay_s"),
    ("delay past ten years", {"delay_s": 11 * 366 * 86_400.0}, "delay_s"),
    ("run_at overflowing", {"run_at": datetime.max.replace(tzinfo=UTC)}, "run_at"),
    ("run_at past ten years", {"run_at": FAR}, "run_at"),
    ("timeout inf", {"timeout_s": math.inf}, "timeout_s"),
    ("timeout nan", {"timeout_s": math.nan}, "timeout_s"),
    ("timeout zero", {"timeout_s": 0}, "timeout_s"),
    ("timeout overflowing", {"timeout_s": 1e300}, "timeout_s"),
    ("max_attempts 10**9", {"max_attempts": 10**9}, "max_attempts"),
    ("max_attempts 1001", {"max_attempts": 1001}, "max_attempts"),
    ("max_attempts 0", {"max_attempts": 0}, "max_attempts"),
    ("max_attempts float", {"max_attempts": 2.5}, "max_attempts"),
    ("backoff huge", {"backoff_ms": 10**30}, "backoff_ms"),
    ("backoff negative", {"backoff_ms": -1}, "backoff_ms"),
    ("backoff float", {"backoff_ms": 1.5}, "backoff_ms"),
]
SINGLE_ONLY: list[tuple[str, dict[str, Any], str]] = [
    ("dedupe ttl nan", {"dedupe_key": "k", "dedupe_ttl_s": math.nan}, "dedupe_ttl_s"),
    ("dedupe ttl inf", {"dedupe_key": "k", "dedupe_ttl_s": math.inf}, "dedupe_ttl_s"),
    ("dedupe ttl overflowing", {"dedupe_key": "k", "dedupe_ttl_s": 1e300}, "dedupe_ttl_s"),
]


@pytest.fixture
def settings(make_settings) -> QueueSettings:
    return make_settings(worker_count=1, max_payload_bytes=1000)


async def test_add_refuses_each_bad_task_and_writes_nothing(settings, redis_client) -> None:
    aq = AffinityQueue(settings)
    done: list[int] = []

    @aq.handler("t")
    async def handle(payload: dict[str, int]) -> None:
        done.append(payload["n"])

    q = aq.queue()
    queued = [await q.add({**GOOD, "payload": {"n": i}}) for i in range(3)]
    before = await snapshot(redis_client, settings)
    for case, bad, field in BAD_TASKS:
        with pytest.raises(InvalidTaskError) as caught:
            await q.add(bad)
        assert field in str(caught.value), f"{case}: {caught.value}"
        assert caught.value.field is not None and caught.value.field.startswith(field), case
    assert await snapshot(redis_client, settings) == before, "a refused task left a trace"

    async with aq:
        stats = await drained(q, 3)
        stored = [await q.get_job(j.id) for j in queued]
    assert sorted(done) == [0, 1, 2], "tasks queued before the refusals did not run"
    assert all(j is not None and j.status is JobStatus.COMPLETED for j in stored)
    assert (stats.completed, stats.failed, stats.pending) == (3, 0, 0)


async def test_add_and_add_bulk_refuse_each_bad_option_and_write_nothing(
    settings, redis_client
) -> None:
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        await q.add(GOOD)
        before = await snapshot(redis_client, settings)
        for case, options, field in BAD_OPTIONS + SINGLE_ONLY:
            with pytest.raises(InvalidTaskError) as caught:
                await q.add(GOOD, **options)
            assert field in str(caught.value) and caught.value.field == field, case
            if (case, options, field) in SINGLE_ONLY:
                continue
            with pytest.raises(InvalidTaskError) as caught:
                await q.add_bulk([GOOD, GOOD], **options)
            assert caught.value.field == field, case
        assert await snapshot(redis_client, settings) == before, "a refused option left a trace"
        # The limits themselves are accepted.
        limit_ok = await q.add(
            GOOD, delay_s=10 * 366 * 86_400, max_attempts=1000, timeout_s=1e-6, backoff_ms=0
        )
        assert limit_ok.max_attempts == 1000 and limit_ok.run_at is not None
        assert (await q.add(GOOD, delay_s=-5)).run_at is None  # a delay in the past is "now"
    finally:
        await aq.aclose()


async def test_add_bulk_with_an_oversized_tag_anywhere_writes_nothing(settings, redis_client):
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        before = await snapshot(redis_client, settings)
        tasks: list[Any] = [{**GOOD, "payload": {"n": i}} for i in range(1500)]
        tasks[1400] = {"type": "t", "identifyTag": "x" * 1025}
        with pytest.raises(InvalidTaskError) as caught:
            await q.add_bulk(tasks)
        assert "#1400" in str(caught.value) and caught.value.field == "identifyTag"
        assert await snapshot(redis_client, settings) == before
        # The longest tag allowed is stored whole.
        job = await q.add({**GOOD, "identifyTag": "é" * 512})
        assert (await q.get_job(job.id)).identify_tag == "é" * 512  # type: ignore[union-attr]
    finally:
        await aq.aclose()


async def test_a_payload_over_the_limit_is_refused(settings, redis_client) -> None:
    aq = AffinityQueue(settings)
    q = aq.queue()
    before = await snapshot(redis_client, settings)
    # 1000 bytes as JSON is allowed; one byte more is not. Size counts UTF-8 bytes, not characters.
    at_limit = "x" * (1000 - len('""'))
    over = "é" * 500  # 1000 bytes of UTF-8, plus the quotes
    try:
        with pytest.raises(PayloadTooLargeError) as caught:
            await q.add({**GOOD, "payload": over})
        assert "MAX_PAYLOAD_BYTES" in str(caught.value) and caught.value.field == "payload"
        assert caught.value.limit == 1000 and caught.value.size == 1002
        assert isinstance(caught.value, InvalidTaskError)
        assert await snapshot(redis_client, settings) == before
        job = await q.add({**GOOD, "payload": at_limit})
        assert (await q.get_job(job.id)).payload == at_limit  # type: ignore[union-attr]
    finally:
        await aq.aclose()


@pytest.mark.parametrize("position", [0, 3, "last-chunk"])
async def test_add_bulk_with_one_bad_task_writes_nothing(
    settings, redis_client, position: int | str
) -> None:
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        await q.add(GOOD)
        before = await snapshot(redis_client, settings)
        n = 2500  # three chunks: the bad one may sit in the last
        tasks: list[Any] = [{**GOOD, "payload": {"n": i}} for i in range(n)]
        index = n - 1 if position == "last-chunk" else int(position)
        tasks[index] = {"type": "t", "identifyTag": ""}
        with pytest.raises(InvalidTaskError) as caught:
            await q.add_bulk(tasks)
        assert f"#{index}" in str(caught.value) and "identifyTag" in str(caught.value)
        tasks[index] = {**GOOD, "payload": "x" * 2000}
        with pytest.raises(PayloadTooLargeError):
            await q.add_bulk(tasks)
        assert await snapshot(redis_client, settings) == before, "a refused bulk left a trace"
        stats = await q.get_queue_stats()
        assert stats.pending == 1
    finally:
        await aq.aclose()


async def test_both_spellings_of_the_tag_and_task_objects_are_accepted(settings) -> None:
    aq = AffinityQueue(settings)
    q = aq.queue()
    try:
        camel = await q.add({"type": "t", "identifyTag": "a", "payload": 1})
        snake = await q.add({"type": "t", "identify_tag": "b", "payload": 2})
        model = await q.add(Task(type="t", identify_tag="c", payload=3))
        no_payload = await q.add({"type": "t", "identifyTag": "d"})
        jobs = await q.add_bulk(
            [{"type": "t", "identify_tag": "e"}, Task.model_validate({**GOOD, "identifyTag": "f"})]
        )
        for job, tag in zip([camel, snake, model, no_payload, *jobs], "abcdef", strict=True):
            stored = await q.get_job(job.id)
            assert stored is not None and stored.identify_tag == job.identify_tag == tag
        assert (await q.get_job(no_payload.id)).payload is None  # type: ignore[union-attr]
        assert camel.model_dump()["identifyTag"] == "a"
    finally:
        await aq.aclose()


# -- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "env_name"),
    [
        ({"max_batch_size": 0}, "MAX_BATCH_SIZE"),
        ({"worker_count": 0}, "WORKER_COUNT"),
        ({"scheduler_interval_ms": 1}, "SCHEDULER_INTERVAL"),
        ({"app_role": "LEADER"}, "APP_ROLE"),
        ({"redis_port": 70000}, "REDIS_PORT"),
        ({"pending_queue_name": "a{b}"}, "PENDING_QUEUE_NAME"),
        ({"worker_queue_prefix": "a*"}, "WORKER_QUEUE_PREFIX"),
        ({"max_payload_bytes": 0}, "MAX_PAYLOAD_BYTES"),
        ({"identify_tag_concurrency": 0}, "IDENTIFY_TAG_CONCURRENCY"),
        ({"identify_tag_concurrency": {"default": 1, "t": 0}}, "IDENTIFY_TAG_CONCURRENCY"),
        ({"heartbeat_interval_ms": 5000, "election_lock_ttl_ms": 1000}, "HEARTBEAT_INTERVAL"),
        ({"heartbeat_interval_ms": 5000, "heartbeat_timeout_ms": 1000}, "HEARTBEAT_TIMEOUT"),
    ],
)
def test_bad_settings_raise_naming_the_variable(kwargs: dict[str, Any], env_name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        QueueSettings(_env_file=None, **kwargs)
    assert env_name in str(caught.value)


def test_settings_are_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("WORKER_COUNT", "3")
    monkeypatch.setenv("APP_ROLE", "worker")
    monkeypatch.setenv("PENDING_QUEUE_NAME", "from-env")
    monkeypatch.setenv("SCHEDULER_INTERVAL", "250")
    monkeypatch.setenv("IDENTIFY_TAG_CONCURRENCY", '{"default": 2, "vip": 5}')
    s = QueueSettings(_env_file=None)
    assert (s.max_batch_size, s.worker_count, s.app_role) == (7, 3, Role.WORKER)
    assert (s.pending_queue_name, s.scheduler_interval_ms) == ("from-env", 250)
    assert s.identify_tag_concurrency.for_tag("vip") == 5
    assert s.identify_tag_concurrency.for_tag("other") == 2
    # Keywords, by Python name or by variable name, win over the environment.
    assert QueueSettings(_env_file=None, max_batch_size=4).max_batch_size == 4
    assert QueueSettings(_env_file=None, MAX_BATCH_SIZE=6).max_batch_size == 6  # type: ignore[call-arg]
    monkeypatch.setenv("IDENTIFY_TAG_CONCURRENCY", "4")
    assert QueueSettings(_env_file=None).identify_tag_concurrency.default == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_BATCH_SIZE", "0"), ("MAX_BATCH_SIZE", "ten"), ("APP_ROLE", "LEADER")],
)
def test_bad_environment_values_raise_naming_the_variable(monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        QueueSettings(_env_file=None)
    assert name in str(caught.value)


def test_a_dotenv_file_is_read_and_the_environment_wins(monkeypatch, tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_BATCH_SIZE=8\nWORKER_COUNT=2\n")
    monkeypatch.delenv("MAX_BATCH_SIZE", raising=False)
    monkeypatch.setenv("WORKER_COUNT", "5")
    s = QueueSettings(_env_file=env_file)
    assert (s.max_batch_size, s.worker_count) == (8, 5)


def test_an_env_prefix_namespaces_every_variable(monkeypatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("AQ_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("AQ_APP_ROLE", "worker")
    monkeypatch.delenv("APP_ROLE", raising=False)
    s = QueueSettings(_env_file=None, _env_prefix="AQ_")
    assert (s.max_batch_size, s.app_role) == (7, Role.WORKER)
    assert QueueSettings(_env_file=None).max_batch_size == 5  # no prefix: the original names

    class Prefixed(QueueSettings):
        model_config = SettingsConfigDict(**{**QueueSettings.model_config, "env_prefix": "AQ_"})

    assert Prefixed(_env_file=None).max_batch_size == 7
    monkeypatch.setenv("AQ_WORKER_COUNT", "0")
    with pytest.raises(ValidationError) as caught:
        Prefixed(_env_file=None)
    assert "AQ_WORKER_COUNT" in str(caught.value)


def test_a_named_queue_reads_its_own_variables_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("WORKER_COUNT", "2")
    monkeypatch.setenv("PENDING_QUEUE_NAME", "app")
    monkeypatch.setenv("HIGH_PRIORITY__MAX_BATCH_SIZE", "9")
    env_file = tmp_path / ".env"
    env_file.write_text("HIGH_PRIORITY__WORKER_STATE_PREFIX=hp-state\n")
    hp = QueueSettings.for_queue("high-priority", _env_file=env_file)
    assert (hp.max_batch_size, hp.worker_count) == (9, 2)  # its own, then the plain one
    # Key names never fall back as they are: the queue must have keys of its own.
    assert (hp.pending_queue_name, hp.worker_queue_prefix) == (
        "app-high-priority",
        "worker-queue-high-priority",
    )
    assert hp.worker_state_prefix == "hp-state"
    assert QueueSettings(_env_file=env_file).max_batch_size == 5
    monkeypatch.setenv("HIGH_PRIORITY__MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError) as caught:
        QueueSettings.for_queue("high-priority", _env_file=None)
    assert "HIGH_PRIORITY__MAX_BATCH_SIZE" in str(caught.value)
    monkeypatch.setenv("HIGH_PRIORITY__MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("HIGH_PRIORITY__HEARTBEAT_INTERVAL", "90000")
    with pytest.raises(ValidationError) as caught:
        QueueSettings.for_queue("high-priority", _env_file=None)
    assert "HIGH_PRIORITY__HEARTBEAT_INTERVAL must be" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "default", "limits"),
    [
        ('{"limits": 3}', 1, {"limits": 3}),
        ('{"default": 2, "limits": {"default": 5, "limits": 4}}', 2, {"default": 5, "limits": 4}),
        ('{"default": 2, "vip": 5}', 2, {"vip": 5}),
        (" 4 ", 4, {}),
    ],
)
def test_tag_concurrency_can_name_every_tag(monkeypatch, value, default, limits) -> None:
    monkeypatch.setenv("IDENTIFY_TAG_CONCURRENCY", value)
    c = QueueSettings(_env_file=None).identify_tag_concurrency
    assert (c.default, c.limits) == (default, limits)


@pytest.mark.parametrize("value", ["abc", '{"default": "x"}', "[1]", '{"t": 0}'])
def test_a_bad_tag_concurrency_names_the_variable(monkeypatch, value) -> None:
    monkeypatch.setenv("IDENTIFY_TAG_CONCURRENCY", value)
    with pytest.raises(ValidationError) as caught:
        QueueSettings(_env_file=None)
    assert "IDENTIFY_TAG_CONCURRENCY" in str(caught.value)
    assert "identify_tag_concurrency" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["localhost:6379", "127.0.0.1:6379", "http://localhost", "redis:/x", "  "]
)
def test_a_redis_url_without_a_known_scheme_is_refused(monkeypatch, url) -> None:
    monkeypatch.setenv("REDIS_URL", url + "?password=hunter2")
    with pytest.raises(ValidationError) as caught:
        QueueSettings(_env_file=None)
    assert "REDIS_URL" in str(caught.value) and "redis://" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_redis_password_fills_in_a_url_without_one(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss/word")
    monkeypatch.setenv("REDIS_URL", "redis://app@db.internal:6380/2")
    assert QueueSettings(_env_file=None).resolved_redis_url == (
        "redis://app:p%40ss%2Fword@db.internal:6380/2"
    )
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis.sock?db=1")
    assert QueueSettings(_env_file=None).resolved_redis_url.endswith("db=1&password=p%40ss%2Fword")
    for url in ("redis://:other@db:6379/0", "rediss://db:6379/0?password=other"):
        monkeypatch.setenv("REDIS_URL", url)
        with pytest.raises(ValidationError) as caught:
            QueueSettings(_env_file=None)
        message = str(caught.value)
        assert "REDIS_URL" in message and "REDIS_PASSWORD" in message
        assert "other" not in message and "p@ss" not in message
