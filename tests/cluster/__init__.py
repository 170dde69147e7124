"""Redis Cluster tests: a real 3-master, 3-replica cluster per test, built by ``redis-cli``."""
