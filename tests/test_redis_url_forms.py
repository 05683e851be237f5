"""The redis.url forms docs/configuration.md documents beyond the plain ones, each shown working
on servers started here: a TLS Redis Cluster with the password in the URL (broker, producer
client and a real agent from its config), a TLS Sentinel whose sentinels need the password
(``?sentinel_auth=true``), and the query options these URLs refuse.

Needs a redis-server built with TLS and ``openssl`` (as the TLS tests of
test_redis_topologies.py); skipped without them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import yaml
from redis.sentinel import MasterNotFoundError

from agent.broker import Broker, connection, keys
from agent.client import Client
from agent.config import ConfigError, load_config
from agent.local_redis import LocalRedis, free_port
from tests.agentproc import AgentProcess, local_config, wait_until
from tests.test_redis_topologies import (
    _cluster_port,
    _make_ca,
    _make_cert,
    _pings,
    _queues_on_different_masters,
    _tls_kwargs,
    _tls_redis_server,
)

PASSWORD = "fleet-pw-7d1c"


@pytest.fixture(scope="module")
def tls_tools(tmp_path_factory) -> tuple[str, Path]:
    binary = _tls_redis_server()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs a redis-server built with TLS (apt-get install redis-server) and openssl")
    pki = tmp_path_factory.mktemp("pki")
    _make_ca(pki, "ca")
    for name in ("server", "client"):
        _make_cert(pki, "ca", name)
    return binary, pki


def _tls_server_args(pki: Path) -> list[str]:
    return ["--tls-cert-file", str(pki / "server.crt"), "--tls-key-file", str(pki / "server.key"),
            "--tls-ca-cert-file", str(pki / "ca.crt")]


def _require_password(port: int) -> None:
    # Set after start: LocalRedis waits for an unauthenticated INFO on the plain port.
    redis.Redis(port=port).config_set("requirepass", PASSWORD)


@pytest.fixture(scope="module")
def tls_cluster(tls_tools):
    """Three password-protected masters speaking TLS to clients and on the cluster bus."""
    binary, pki = tls_tools
    nodes, tls_ports = [], []
    try:
        for _ in range(3):
            tls_port = _cluster_port()  # with tls-cluster the bus is the TLS port + 10000
            tls_ports.append(tls_port)
            nodes.append(LocalRedis(binary=binary, port=free_port(), extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--tls-port", str(tls_port), "--tls-cluster", "yes",
                *_tls_server_args(pki)]).start())
        for node in nodes:
            _require_password(node.port)
        clients = [redis.Redis(port=n.port, password=PASSWORD) for n in nodes]
        for client, (lo, hi) in zip(clients, [(0, 5460), (5461, 10922), (10923, 16383)], strict=True):
            client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi + 1))
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", tls_ports[0])

        def healthy() -> bool:
            infos = [c.execute_command("CLUSTER INFO") for c in clients]
            return all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == 3 for i in infos)

        wait_until(healthy, 30, what="TLS cluster ok")
        for client in clients:
            client.close()
        yield f"rediss+cluster://:{PASSWORD}@" + ",".join(f"127.0.0.1:{p}" for p in tls_ports), pki
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def tls_sentinel(tls_tools, tmp_path_factory):
    """A password-protected master and a sentinel, both on TLS; the sentinel wants the same
    password as the master."""
    binary, pki = tls_tools
    master_tls = free_port()
    master = LocalRedis(binary=binary, extra_args=["--tls-port", str(master_tls), *_tls_server_args(pki)]).start()
    _require_password(master.port)
    workdir = tmp_path_factory.mktemp("sentinel")
    port, tls_port = free_port(), free_port()
    (workdir / "sentinel.conf").write_text("\n".join([
        f"port {port}", f"tls-port {tls_port}", "bind 127.0.0.1", f"dir {workdir}",
        f"tls-cert-file {pki / 'server.crt'}", f"tls-key-file {pki / 'server.key'}",
        f"tls-ca-cert-file {pki / 'ca.crt'}", "tls-replication yes", f"requirepass {PASSWORD}",
        f"sentinel monitor mymaster 127.0.0.1 {master_tls} 1", f"sentinel auth-pass mymaster {PASSWORD}",
        "sentinel down-after-milliseconds mymaster 1000", ""]))
    sentinel = subprocess.Popen([binary, str(workdir / "sentinel.conf"), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _pings_with_password(port), 10, what="sentinel up")
        yield f"rediss+sentinel://:{PASSWORD}@127.0.0.1:{tls_port}/mymaster/0", pki
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def _pings_with_password(port: int) -> bool:
    try:
        return redis.Redis(port=port, password=PASSWORD, socket_timeout=0.5).ping()
    except redis.RedisError:
        return _pings(port)


async def _round_trip(url: str, pki: Path, queues: list[str]) -> None:
    client = connection.async_client(url, socket_timeout=5, **_tls_kwargs(pki))
    try:
        broker = Broker(client)
        for queue in queues:
            await broker.enqueue("t", b"p", queue=queue, retention=60)
            [task], _ = await broker.dequeue(queue)
            await broker.complete(task, b"ok")
            assert (await broker.get_task(queue, task.id)).state == "completed"
    finally:
        await client.aclose()


@pytest.mark.timeout(120)
def test_tls_cluster_url_with_its_password_for_broker_client_and_agent(tls_cluster, tmp_path):
    url, pki = tls_cluster
    queues = _queues_on_different_masters("tlsfleet")
    asyncio.run(_round_trip(url, pki, queues))

    config, port = local_config(tmp_path, url, queues, concurrency=2)
    data = yaml.safe_load(config.read_text())
    data["redis"].update({"tls_ca_file": str(pki / "ca.crt"), "tls_cert_file": str(pki / "client.crt"),
                          "tls_key_file": str(pki / "client.key")})
    config.write_text(yaml.safe_dump(data))
    agent = AgentProcess(config, port, tmp_path / "agent.log").start()
    try:
        with Client(url, socket_timeout=5, **_tls_kwargs(pki)) as client:
            infos = [client.enqueue("stamp", {}, queue=q, retention=60) for q in queues]
            for info in infos:
                assert client.wait(info.queue, info.id, timeout=30).state == "completed"
            owners = {client.redis.get_node_from_key(keys.pending(q)).port for q in queues}
            assert len(owners) == 3  # the queues really live on three masters
    finally:
        assert agent.stop() == 0
    assert PASSWORD not in agent.output()


@pytest.mark.timeout(60)
def test_tls_sentinel_url_with_sentinel_auth(tls_sentinel):
    url, pki = tls_sentinel
    asyncio.run(_round_trip(url + "?sentinel_auth=true", pki, ["sentinelq"]))
    with Client(url + "?sentinel_auth=true", socket_timeout=5, **_tls_kwargs(pki)) as client:
        assert client.redis.ping()
    # Without the option the sentinels are asked with no password, and refuse.
    with Client(url, socket_timeout=5, **_tls_kwargs(pki)) as client, pytest.raises(
            MasterNotFoundError):
        client.redis.ping()


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://h1:7000,h2:7001?socket_timeout=5", "takes no query options, got 'socket_timeout'"),
    ("redis+sentinel://s1:26379/mymaster/0?db=2", "takes only the query option sentinel_auth, got 'db'"),
    ("redis+sentinel://s1:26379/mymaster?sentinel_auth=perhaps", "sentinel_auth in a redis+sentinel:// URL"),
])
def test_cluster_and_sentinel_urls_refuse_options_they_would_ignore(tmp_path, url, message):
    (tmp_path / "code").mkdir()
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": url}, "worker": {"queues": ["q"]},
        "deployment": {"path": str(tmp_path / "code"), "startup_cmd": "python w.py"}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "redis.url" in str(caught.value) and message in str(caught.value)
