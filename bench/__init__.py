"""Benchmarks for affinity-queue: not tests; they measure and write JSON and Markdown.

Run from the repository root (they start their own redis-server on a free port, never 6379)::

    .venv/bin/python -m bench.core          # the core engine (issue 2), about 5 minutes
    .venv/bin/python -m bench.suite         # against the peers (issue 6), about 7 minutes
    .venv/bin/python -m bench.hot           # the hot tag alone, per task and batched (issue 14)

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

- ``peers/``    one module per system (ours included): the worker side its own CLI imports, and
                an adapter the suite enqueues through; ``probe`` (what every no-op task does)
                and ``process`` (worker subprocesses);
- ``suite/``     the suite against the peers: ``workloads`` (W1-W4, W6), ``markdown``, and
                ``__main__`` (the command), writing the ``peers`` section; W5 reuses
                ``core.placement``;
- ``hot``       the hot tag alone, in one process: per-task and batch handlers (issue 14).

The peers are in the ``bench`` extra (``pip install -e '.[bench]'``), except arq, whose
``redis<6`` pin would downgrade redis-py for every system: ``pip install --no-deps arq==0.28.0``.
A peer that is not installed is reported as such and the others run.
"""
