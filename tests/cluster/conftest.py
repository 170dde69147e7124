from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from .redis_cluster import RedisCluster


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test alone (faults reshape it), removed afterwards, pass or fail."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("the cluster tests need redis-server and redis-cli: apt-get install redis")
    cluster = RedisCluster()
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()
