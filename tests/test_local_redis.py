"""The throwaway redis-server of tests, demo and benchmarks: its port is its own."""

from __future__ import annotations

import socket

import pytest
import redis

from agent.local_redis import PORT_RANGE_VAR, LocalRedis, PortTaken, free_port


def test_a_server_already_on_the_port_is_not_taken_for_ours(redis_server):
    # Another server answers PING on that port while ours fails to bind it: start() must see
    # that the answer is not from its own process (it used to return as if it had started,
    # and two test workers would share one Redis and flush each other's keys).
    other = LocalRedis(port=redis_server.port)
    with pytest.raises(PortTaken, match=str(redis_server.port)):
        other.start()
    assert other.process is None
    assert redis.Redis(port=redis_server.port).ping()  # the first server is untouched


def test_a_range_with_every_port_bound_is_an_error_naming_it(monkeypatch, redis_server):
    monkeypatch.setenv(PORT_RANGE_VAR, f"{redis_server.port}-{redis_server.port}")
    with pytest.raises(RuntimeError, match=f"{PORT_RANGE_VAR}={redis_server.port}"):
        free_port()


def test_free_ports_come_from_the_range_without_repeats(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        low, high = port - 3, port + 3
        monkeypatch.setenv(PORT_RANGE_VAR, f"{low}-{high}")
        picked = [free_port() for _ in range(4)]
    assert all(low <= p <= high for p in picked)
    assert port not in picked
    assert len(set(picked)) == 4


@pytest.mark.parametrize("value", ["12000", "a-b", "9-20", "20000-10000", "60000-70000"])
def test_a_bad_range_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(PORT_RANGE_VAR, value)
    with pytest.raises(ValueError, match=PORT_RANGE_VAR):
        free_port()
