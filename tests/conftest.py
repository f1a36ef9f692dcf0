"""Fixtures shared by test modules: a real redis-server for the scale-out tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster import RedisServer, redis_server_path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """``redis-server`` on a free loopback port with ``appendfsync always``, stopped at the
    end. Without the program the test skips, saying so, except under ``CI=true``, where
    it fails: ``.ci/run`` installs Debian's redis-server.
    """
    if redis_server_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
