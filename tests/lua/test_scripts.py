"""The Lua scripts: documented headers, survival of SCRIPT FLUSH, and no KEYS anywhere."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import re
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pytest

from affinity_queue import AffinityQueue, JobContext
from affinity_queue.keys import QueueKeys, lua_key_names
from affinity_queue.lua import SCRIPT_NAMES, script_source
from affinity_queue.lua.prelude import prune

from ..support import drained, wait_for

LUA_DIR = Path(str(files("affinity_queue.lua")))
OPERATIONS = sorted(p.stem for p in LUA_DIR.glob("*.lua") if not p.stem.startswith("_"))
ROOT = Path(__file__).resolve().parents[2]

HEADER = re.compile(r"\A--\[\[(?P<header>.*?)\]\](?P<code>.*)\Z", re.S)
ARGV_LITERAL = re.compile(r"ARGV\[(\d+)\]")
ARGV_RANGE = re.compile(r"ARGV\[(\d+)[^\]]*\.\.\]")  # ARGV[3..], ARGV[2 + 4i..]
ARGV_COMPUTED = re.compile(r"ARGV\[(?!\d+\])|unpack\(\s*ARGV|#ARGV")
UNPACK_FROM = re.compile(r"unpack\(\s*ARGV\s*,\s*(\d+)")
KEYS_COMMAND = re.compile(r"""(?:rcall|redis\.p?call)\s*\(\s*['"]keys['"]""", re.I)


def split(name: str) -> tuple[str, str]:
    text = (LUA_DIR / f"{name}.lua").read_text()
    match = HEADER.match(text)
    assert match, f"{name}.lua does not open with a --[[ header ]]"
    return match["header"], match["code"]


def test_every_operation_file_is_loaded() -> None:
    assert sorted(SCRIPT_NAMES) == OPERATIONS


@pytest.mark.parametrize("name", OPERATIONS)
def test_script_header_documents_purpose_keys_and_every_argv(name: str) -> None:
    header, code = split(name)
    first = header.strip().splitlines()[0]
    assert first.startswith(f"{name}: "), f"{name}.lua: header should open with '{name}: purpose'"
    assert re.search(r"\batomic\b", header, re.I), f"{name}.lua: header does not say why atomic"
    assert "KEYS" in header, f"{name}.lua: header does not name its KEYS"
    assert "Returns" in header, f"{name}.lua: header does not document the return value"
    assert "Safe to repeat:" in header, f"{name}.lua: header does not say how a repeat is safe"

    documented = {int(n) for n in ARGV_LITERAL.findall(header)}
    ranges = [int(n) for n in ARGV_RANGE.findall(header)]

    def covered(n: int) -> bool:
        return n in documented or any(start <= n for start in ranges)

    used = {int(n) for n in ARGV_LITERAL.findall(code)}
    missing = sorted(n for n in used if not covered(n))
    assert not missing, f"{name}.lua reads ARGV{missing} but its header does not mention them"
    if ARGV_COMPUTED.search(code):
        assert ranges, f"{name}.lua reads ARGV by a computed index; document it as ARGV[n..]"
    for n in UNPACK_FROM.findall(code):
        assert covered(int(n)), f"{name}.lua unpacks ARGV from {n}, undocumented"
    undocumented = sorted(documented - used - set(ranges))
    assert not undocumented, f"{name}.lua documents ARGV{undocumented} but never reads them"


def test_shared_prelude_documents_every_key_in_the_order_keys_py_passes_them() -> None:
    header, _ = split("_shared")
    n_keys = len(QueueKeys("q", "wq", "ws").script_keys)
    documented = [int(n) for n in re.findall(r"KEYS\[(\d+)\]", header)]
    assert documented == list(range(1, n_keys + 1))
    names = lua_key_names()
    assert sorted({int(n) for n in re.findall(r"KEYS\[(\d+)\]", names)}) == list(
        range(1, n_keys + 1)
    )
    for name in [*OPERATIONS, "_shared"]:
        _, op_code = split(name)
        assert "KEYS[" not in op_code, f"{name}.lua indexes KEYS itself; use the K_* names"
    defined = set(re.findall(r"local (K_\w+) =", names))
    used = {k for name in [*OPERATIONS, "_shared"] for k in re.findall(r"\bK_\w+", split(name)[1])}
    assert used <= defined, f"scripts use undefined key names: {used - defined}"


def test_prune_keeps_what_the_operation_needs_transitively_with_its_comments() -> None:
    prelude = (
        "--[[ header ]]\nlocal a = 1\nlocal unused = 2\n-- b's comment\n"
        "local function b()\n  return a  -- not c\nend\nlocal function c() return 3 end\n"
    )
    kept = (
        "--[[ header ]]\nlocal a = 1\n-- b's comment\n"
        "local function b()\n  return a  -- not c\nend\n"
    )
    assert prune(prelude, "--[[ calls c ]]\n-- c\nreturn b()\n") == kept


@pytest.mark.parametrize("name", OPERATIONS)
def test_each_script_defines_every_prelude_name_it_uses(name: str) -> None:
    full = lua_key_names() + (LUA_DIR / "_shared.lua").read_text()
    prelude_names = set(re.findall(r"^local (?:function )?(\w+)", full, re.M))
    source = script_source(name)
    code = re.sub(r"--\[\[.*?\]\]|--[^\n]*", "", source, flags=re.S)
    used = set(re.findall(r"[A-Za-z_]\w*", code)) & prelude_names
    defined = set(re.findall(r"^local (?:function )?(\w+)", source, re.M))
    assert used <= defined, f"{name}: prelude names used but not defined: {used - defined}"
    assert prelude_names - defined, f"{name}: the whole prelude was kept"


@pytest.mark.parametrize("name", [*OPERATIONS, "_shared"])
def test_no_script_runs_the_keys_command(name: str) -> None:
    source = (LUA_DIR / f"{name}.lua").read_text()
    assert not KEYS_COMMAND.search(source), f"{name}.lua calls KEYS; use SCAN or an index"


def python_files() -> list[Path]:
    found = [
        p
        for folder in ("affinity_queue", "example_app", "bench")
        for p in (ROOT / folder).rglob("*.py")
        if ".venv" not in p.parts
    ]
    assert any(p.name == "worker.py" for p in found)
    return found


def keys_calls(tree: ast.AST) -> list[int]:
    """Lines that call ``.keys(...)`` on something that looks like a Redis client, or with an
    argument (``dict.keys()`` takes none; ``Redis.keys(pattern)`` does), or send KEYS raw."""
    client = re.compile(r"redis|client|pipe|conn|blocking", re.I)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr == "keys" and (
            node.args or node.keywords or client.search(ast.unparse(node.func.value))
        ):
            lines.append(node.lineno)
        if node.func.attr == "execute_command" and any(
            isinstance(a, ast.Constant) and str(a.value).upper() == "KEYS" for a in node.args[:1]
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_python_code_calls_keys_on_redis() -> None:
    offenders = {
        str(p.relative_to(ROOT)): lines
        for p in python_files()
        if (lines := keys_calls(ast.parse(p.read_text(), str(p))))
    }
    assert not offenders, f"KEYS blocks Redis; use SCAN: {offenders}"


def test_the_keys_detector_finds_what_it_should() -> None:
    bad = "async def f(redis, pipe):\n    await redis.keys('*')\n    pipe.keys()\n"
    assert keys_calls(ast.parse(bad)) == [2, 3]
    assert keys_calls(ast.parse("d = {}\nd.keys()\nsettings.keys\n")) == []


async def test_scripts_survive_script_flush_mid_run(make_settings, redis_client) -> None:
    aq = AffinityQueue(make_settings(worker_count=2, max_batch_size=5))
    ran: Counter[str] = Counter()

    @aq.handler("t")
    async def handle(payload: int, ctx: JobContext) -> None:
        ran[ctx.job_id] += 1
        await asyncio.sleep(0.001)

    shas = [hashlib.sha1(script_source(n).encode()).hexdigest() for n in SCRIPT_NAMES]
    q = aq.queue()
    first = await q.add_bulk(
        {"type": "t", "identifyTag": f"tag-{i % 5}", "payload": i} for i in range(300)
    )
    async with aq:
        await wait_for(q.get_queue_stats, lambda s: s.completed >= 50, what="50 done")
        assert all(await redis_client.script_exists(*shas[:1]))
        await redis_client.script_flush()
        assert not any(await redis_client.script_exists(*shas))
        # Every operation must keep working: adding, dispatching, advancing, heartbeats.
        second = await q.add_bulk(
            {"type": "t", "identifyTag": "late", "payload": i} for i in range(50)
        )
        await wait_for(q.get_queue_stats, lambda s: s.completed >= 200, what="200 done")
        await redis_client.script_flush()
        stats = await drained(q, 350)
    assert (stats.completed, stats.failed) == (350, 0)
    assert set(ran) == {j.id for j in first + second}
    assert set(ran.values()) == {1}, "a job ran twice across a SCRIPT FLUSH"
