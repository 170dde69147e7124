"""Builds each script's prelude: only the key names and shared definitions it uses.

Redis runs a cached script's whole text on every call, prelude included: each ``local function``
of ``_shared.lua`` builds a closure and each ``K_*`` name concatenates a string, every time. The
full prelude cost 7-10 µs per call against the 2 µs of an empty script, more than the commands of
a short ``advance``; each operation uses a handful of its ~60 definitions.

A definition is a top-level ``local`` of the prelude (a key name, a constant or a function) with
the comment lines just above it. A definition is kept when the operation, or a definition kept
already, spells its name; Lua locals see only earlier ones, so one pass from the last definition
to the first finds every dependency. Names are matched as words over the code with its comment
lines removed: a word that is no reference (in a string, after code on a line) only keeps a
definition that was not needed, never drops one that was.
"""

from __future__ import annotations

import re

_DEFINES = re.compile(r"local (?:function )?(\w+)")
_WORD = re.compile(r"[A-Za-z_]\w*")
_BLOCK_COMMENT = re.compile(r"--\[\[.*?\]\]", re.S)


def _words(code: str) -> set[str]:
    """The words of ``code`` outside its comment lines and ``--[[ ]]`` blocks (the headers)."""
    body = _BLOCK_COMMENT.sub("", code)
    return {
        w
        for line in body.splitlines()
        if not line.lstrip().startswith("--")
        for w in _WORD.findall(line)
    }


def _definitions(prelude: str) -> tuple[str, list[tuple[str, str]]]:
    """The prelude's header (text before its first definition) and its definitions in order, as
    (name, text)."""
    header: list[str] = []
    defs: list[tuple[str, list[str]]] = []
    comments: list[str] = []
    for line in prelude.splitlines(keepends=True):
        if m := _DEFINES.match(line):
            defs.append((m[1], [*comments, line]))
            comments = []
        elif line.startswith("--") and defs:
            comments.append(line)  # above the next definition, or the prelude's last lines
        elif defs:
            defs[-1][1].extend([*comments, line])
            comments = []
        else:
            header.append(line)
    if comments:
        defs[-1][1].extend(comments)
    return "".join(header), [(name, "".join(lines)) for name, lines in defs]


def prune(prelude: str, operation: str) -> str:
    """``prelude`` reduced to the definitions ``operation`` needs, in their order."""
    header, defs = _definitions(prelude)
    needed = _words(operation)
    kept: list[str] = []
    for name, text in reversed(defs):
        if name in needed:
            kept.append(text)
            needed |= _words(text)
    return header + "".join(reversed(kept))
