"""A model-based test of the engine: random operations through a fault layer against the real
scripts on a private redis-server, the Redis state checked after every step against a small
reference model (see harness.py for the operations, check.py for the invariants)."""
