"""Shared fixtures: one real redis-server per test session, flushed before every test."""

from __future__ import annotations

import pytest
import redis

from agent.local_redis import LocalRedis


@pytest.fixture(scope="session")
def redis_server():
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    """A synchronous client on a freshly flushed Redis, for asserting key state."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
