"""Where results go: a JSON file per suite and run day, and one section per suite in the docs.

``docs/benchmarks.md`` holds one section per suite between ``<!-- bench:<suite>:begin -->`` and
``<!-- bench:<suite>:end -->``; a suite rewrites only its own section, so the core's and the
peers' results can be refreshed independently, and prose outside the markers is kept.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

DOCS_HEADER = """# Benchmarks

Figures measured by the `bench/` suite on one machine, in one run each; the JSON behind every
table is in `bench/results/`. The machines are shared and noisy: read the figures as ratios to the
raw redis-py round trips measured in the same run, not as absolutes.
"""


def results_path(suite: str, *, tag: str = "") -> Path:
    suffix = f"-{tag}" if tag else ""
    return RESULTS_DIR / f"{suite}-{date.today().isoformat()}{suffix}.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all: a ``.tmp`` file (git-ignored) renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def update_section(suite: str, body: str, path: Path = DOCS) -> None:
    begin, end = f"<!-- bench:{suite}:begin -->", f"<!-- bench:{suite}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else DOCS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: float, digits: int = 0) -> str:
    """Thousands separators; ``digits`` decimals."""
    return f"{value:,.{digits}f}"
