"""Benchmarks for affinity-queue: not tests; they measure and write JSON and Markdown.

Run from the repository root (they start their own redis-server on a free port, never 6379)::

    .venv/bin/python -m bench.core          # the core engine (issue 2), about 5 minutes

Layout, so that the suite against the peers (issue 6) adds modules beside these:

- ``env``       the private Redis, the machine's description, CPU and ``INFO commandstats``
                snapshots of the server;
- ``stats``     a measurement repeated over runs (median) and percentiles;
- ``baseline``  raw redis-py round trips/s, so every figure can be read as a ratio on a shared,
                noisy machine;
- ``report``    ``bench/results/<suite>-<date>.json`` and one marked section per suite in
                ``docs/benchmarks.md`` (a suite rewrites only its own section);
- ``core/``     the core engine: ``workloads`` (through the public API), ``placement`` (the
                ``dispatch`` script alone), ``markdown``, and ``__main__`` (the command).

A peers suite would add, e.g., ``bench/peers/<system>.py`` (one adapter per system: enqueue,
drain, latency) and ``bench/suite.py`` writing the ``peers`` section, reusing all of the above.
"""
