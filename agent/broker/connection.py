"""Redis clients from a connection description: standalone, TLS, Cluster or Sentinel.

One URL names the topology, so it travels unchanged through the config file, the control
server's answer and ``RedisConnection.url``; the password and TLS files travel beside it as
keyword arguments (they never sit in a URL that is logged)::

    redis://host:6379/0                      standalone (``rediss://`` for TLS, ``unix://``)
    redis+cluster://h1:7000,h2:7001          Redis Cluster: any reachable nodes seed the map
    redis+sentinel://s1:26379,s2:26379/mymaster/0
                                             Sentinel: the sentinels, the service, the db
    rediss+cluster://...  rediss+sentinel://...  the same over TLS (data nodes; sentinels too)

``user:password@`` may precede the hosts, as in a plain redis URL. The only query option is
``?sentinel_auth=true`` (sentinel URLs: the sentinels get the password too); any other is
refused rather than ignored. Usage::

    client = async_client(url, password="...", ssl_ca_certs="ca.pem", socket_timeout=10)
    lease_client = sync_client(url, password="...")   # a blocking client for threads

Cluster: every Lua script the broker runs touches the keys of one queue only, and every
per-queue key carries the ``{queue}`` hash tag, so each script lands on one slot. The heartbeat
keys share the ``{host:pid:server_id}`` tag; ``asynq:queues`` / ``asynq:servers`` /
``asynq:workers`` are touched by plain commands of their own. Pub/sub (task cancellation)
works through the cluster client.

Sentinel: the client asks the sentinels for the current master before each new connection, so
after a failover the next command reconnects to the promoted replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

__all__ = [
    "CLUSTER_SCHEMES", "SENTINEL_SCHEMES", "STANDALONE_SCHEMES", "ConnectionTarget",
    "InvalidRedisURL", "async_client", "describe", "parse_url", "sync_client",
]

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

#: Keyword arguments meant for TLS connections only (dropped when TLS is off).
_TLS_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
             "ssl_ca_path", "ssl_password", "ssl_min_version", "ssl_ciphers")
#: Keyword arguments a Redis Cluster client does not take (it has no databases).
_NOT_FOR_CLUSTER = ("db", "health_check_interval", "single_connection_client")


class InvalidRedisURL(ValueError):
    """The URL does not describe a Redis connection; the message says what to write."""


Kind = Literal["standalone", "cluster", "sentinel"]


@dataclass(frozen=True)
class ConnectionTarget:
    """What a URL describes. ``nodes`` are (host, port) seeds for cluster and sentinel."""

    kind: Kind
    url: str
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""  #: sentinel: the monitored master's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, str] = field(default_factory=dict)


def parse_url(url: str) -> ConnectionTarget:
    """Parse a connection URL; raises :class:`InvalidRedisURL` with a fix in its message."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidRedisURL(f"expected a URL like redis://host:6379/0, got {url!r}")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme in STANDALONE_SCHEMES:
        return ConnectionTarget("standalone", url, tls=scheme == "rediss")
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise InvalidRedisURL(
            f"unknown scheme {scheme!r}: use redis://, rediss://, unix://, redis+cluster://, "
            "rediss+cluster://, redis+sentinel:// or rediss+sentinel://")
    rest, _, query = rest.partition("?")
    rest, _, _fragment = rest.partition("#")
    hosts, _, path = rest.partition("/")
    username = password = None
    if "@" in hosts:
        userinfo, hosts = hosts.rsplit("@", 1)
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    kind: Kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    default_port = DEFAULT_PORT if kind == "cluster" else DEFAULT_SENTINEL_PORT
    nodes = tuple(_node(item, default_port) for item in hosts.split(",") if item.strip())
    if not nodes:
        raise InvalidRedisURL(f"a {scheme}:// URL needs at least one host:port, e.g. "
                              f"{scheme}://10.0.0.1:{default_port}")
    parts = [p for p in path.split("/") if p]
    service, db = "", 0
    if kind == "cluster":
        if parts:
            raise InvalidRedisURL("a Redis Cluster has no databases: write no path after the hosts "
                                  f"(got /{'/'.join(parts)})")
    else:
        if not parts:
            raise InvalidRedisURL("a sentinel URL needs the master's service name after the hosts: "
                                  f"{scheme}://host:26379/mymaster[/db]")
        service = unquote(parts[0])
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise InvalidRedisURL(f"after the service name a sentinel URL takes only a database "
                                  f"number, got /{'/'.join(parts[1:])}")
        db = int(parts[1]) if len(parts) == 2 else 0
    options = _options(scheme, kind, query)
    return ConnectionTarget(kind, url, tls=scheme.startswith("rediss"), nodes=nodes,
                            service=service, db=db, username=username, password=password,
                            options=options)


#: Query options a cluster or sentinel URL takes; anything else is refused, not ignored
#: (timeouts, TLS files and the like are keyword arguments, from the config's redis fields).
_URL_OPTIONS: dict[str, tuple[str, ...]] = {"cluster": (), "sentinel": ("sentinel_auth",)}
_FLAGS = ("1", "true", "yes", "0", "false", "no")


def _options(scheme: str, kind: Kind, query: str) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    allowed = _URL_OPTIONS[kind]
    for name, value in options.items():
        if name not in allowed:
            takes = f"only the query option {', '.join(allowed)}" if allowed else "no query options"
            shown = repr(name) if name.isidentifier() and len(name) <= 40 else "another"  # never a secret
            raise InvalidRedisURL(f"a {scheme}:// URL takes {takes}, got {shown} (TLS files and "
                                  "timeouts go in the redis section or the client's arguments)")
        if value.lower() not in _FLAGS:
            raise InvalidRedisURL(f"{name} in a {scheme}:// URL must be true or false")
    return options


def _node(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:7000
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise InvalidRedisURL(f"missing host in {text!r}: write host:port")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRedisURL(f"the port in {text!r} is not a number in 1-65535")
    return host, int(port)


def describe(url: str) -> str:
    """A short, password-free description for logs: ``cluster 127.0.0.1:7000,...``."""
    try:
        target = parse_url(url)
    except InvalidRedisURL:
        return "an invalid Redis URL"
    if target.kind == "standalone":
        from agent.logs import redact_url

        return redact_url(url)
    nodes = ",".join(f"{h}:{p}" for h, p in target.nodes)
    tls = " over TLS" if target.tls else ""
    if target.kind == "cluster":
        return f"Redis Cluster via {nodes}{tls}"
    return f"Redis Sentinel master {target.service!r} (db {target.db}) via {nodes}{tls}"


def _connection_kwargs(target: ConnectionTarget, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if not target.tls:
        for key in _TLS_KEYS:
            out.pop(key, None)
    if target.password is not None:
        out.setdefault("password", target.password)
    if target.username is not None:
        out.setdefault("username", target.username)
    return out


def async_client(url: str, **kwargs: Any):
    """An asyncio client: ``redis.asyncio.Redis`` (standalone, sentinel master) or
    ``redis.asyncio.cluster.RedisCluster``. ``kwargs`` are redis-py connection arguments."""
    import redis.asyncio as aioredis

    target = parse_url(url)
    if target.kind == "standalone":
        return aioredis.Redis.from_url(url, **kwargs)
    options = _connection_kwargs(target, kwargs)
    if target.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode

        for key in _NOT_FOR_CLUSTER:
            options.pop(key, None)
        options.pop("retry", None)  # the cluster client has its own retry policy
        return _async_cluster_class()(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                                      ssl=target.tls, **options)
    from redis.asyncio.sentinel import (
        Sentinel,
        SentinelConnectionPool,
        SentinelManagedSSLConnection,
    )

    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options))
    pool_kwargs: dict[str, Any] = {"db": target.db}
    if target.tls:
        pool_kwargs["connection_class"] = SentinelManagedSSLConnection
    return sentinel.master_for(target.service, redis_class=aioredis.Redis,
                               connection_pool_class=SentinelConnectionPool,
                               **pool_kwargs, **options)


def sync_client(url: str, **kwargs: Any):
    """A blocking client (``redis.Redis`` or ``redis.cluster.RedisCluster``) for threads."""
    import redis

    target = parse_url(url)
    if target.kind == "standalone":
        return redis.Redis.from_url(url, **kwargs)
    options = _connection_kwargs(target, kwargs)
    if target.kind == "cluster":
        from redis.cluster import ClusterNode

        for key in _NOT_FOR_CLUSTER:
            options.pop(key, None)
        return _sync_cluster_class()(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                                     ssl=target.tls, **options)
    from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedSSLConnection

    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options))
    pool_kwargs: dict[str, Any] = {"db": target.db}
    if target.tls:
        pool_kwargs["connection_class"] = SentinelManagedSSLConnection
    return sentinel.master_for(target.service, redis_class=redis.Redis,
                               connection_pool_class=SentinelConnectionPool,
                               **pool_kwargs, **options)


def _sentinel_kwargs(target: ConnectionTarget, options: Mapping[str, Any]) -> dict[str, Any]:
    """Connection arguments for the sentinels themselves: timeouts, TLS, and the password only
    when the URL asks for it (``?sentinel_auth=true``: the sentinels share the data password)."""
    out = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.tls:
        out["ssl"] = True
        out.update({k: v for k, v in options.items() if k in _TLS_KEYS})
    if target.options.get("sentinel_auth", "").lower() in ("1", "true", "yes"):
        for key in ("username", "password"):
            if options.get(key) is not None:
                out[key] = options[key]
    return out


# -- Redis Cluster: pipelines that may carry scripts ----------------------------------------
#
# redis-py's cluster pipelines refuse EVALSHA, and the broker pipelines its Lua scripts
# (batched outcomes, enqueue_many, heartbeats). These clients hand out a pipeline that queues
# the same calls and, on execute(), sends the commands of each hash slot in order, the slots
# concurrently (asyncio) or one after another (threads). A queued script whose SHA the node
# does not know (a restarted or new primary) is loaded from the source this client saw in
# register_script / script_load and run again. ``transaction=True`` keeps the order but is not
# atomic across commands in cluster mode (the broker uses it only to drop orphan IDs).


def _sha1(script: str | bytes) -> str:
    data = script.encode() if isinstance(script, str) else script
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _command_key(name: str, args: tuple) -> Any:
    if name in ("evalsha", "eval"):
        return args[2] if len(args) > 2 and int(args[1]) > 0 else None
    return args[0] if args else None


class _QueuedCommands:
    """Shared part of both pipelines: queue ``pipe.<command>(...)`` calls, group by slot."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._commands: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not callable(getattr(self._client, name, None)):
            raise AttributeError(name)

        def queue(*args: Any, **kwargs: Any) -> Any:
            self._commands.append((name, args, kwargs))
            return self

        return queue

    def __len__(self) -> int:
        return len(self._commands)

    def reset(self) -> None:
        self._commands = []

    def _groups(self) -> list[list[int]]:
        groups: dict[Any, list[int]] = {}
        for index, (name, args, _) in enumerate(self._commands):
            key = _command_key(name, args)
            slot = ("slot", self._client.keyslot(key)) if key is not None else ("alone", index)
            groups.setdefault(slot, []).append(index)
        return list(groups.values())

    @staticmethod
    def _finish(results: list, raise_on_error: bool) -> list:
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


class _AsyncScriptPipeline(_QueuedCommands):
    def __await__(self):  # AsyncScript does ``await client.evalsha(...)`` on a pipeline
        async def itself() -> _AsyncScriptPipeline:
            return self

        return itself().__await__()

    async def __aenter__(self) -> _AsyncScriptPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reset()

    async def _one(self, name: str, args: tuple, kwargs: dict) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await getattr(self._client, name)(*args, **kwargs)
        except NoScriptError:
            source = self._client._script_sources.get(args[0]) if name == "evalsha" else None
            if source is None:
                raise
            await self._client.script_load(source)
            return await getattr(self._client, name)(*args, **kwargs)

    async def _run_group(self, indexes: list[int], results: list) -> None:
        for index in indexes:
            name, args, kwargs = self._commands[index]
            try:
                results[index] = await self._one(name, args, kwargs)
            except Exception as exc:  # noqa: BLE001 - reported per command, like a pipeline
                results[index] = exc

    async def execute(self, raise_on_error: bool = True) -> list:
        import asyncio

        results: list = [None] * len(self._commands)
        try:
            await asyncio.gather(*(self._run_group(g, results) for g in self._groups()))
        finally:
            self.reset()
        return self._finish(results, raise_on_error)


class _SyncScriptPipeline(_QueuedCommands):
    def __enter__(self) -> _SyncScriptPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def _one(self, name: str, args: tuple, kwargs: dict) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return getattr(self._client, name)(*args, **kwargs)
        except NoScriptError:
            source = self._client._script_sources.get(args[0]) if name == "evalsha" else None
            if source is None:
                raise
            self._client.script_load(source)
            return getattr(self._client, name)(*args, **kwargs)

    def execute(self, raise_on_error: bool = True) -> list:
        results: list = [None] * len(self._commands)
        try:
            for group in self._groups():
                for index in group:
                    name, args, kwargs = self._commands[index]
                    try:
                        results[index] = self._one(name, args, kwargs)
                    except Exception as exc:  # noqa: BLE001 - reported per command
                        results[index] = exc
        finally:
            self.reset()
        return self._finish(results, raise_on_error)


@cache
def _async_cluster_class() -> type:
    from redis.asyncio.cluster import RedisCluster

    class AgentRedisCluster(RedisCluster):
        """``RedisCluster`` whose pipelines accept Lua scripts (see above)."""

        _script_sources: dict[str, Any] = {}  # shared: a SHA names one source everywhere

        def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
            return _AsyncScriptPipeline(self)

        def register_script(self, script: Any) -> Any:
            self._script_sources[_sha1(script)] = script  # SHA -> source, for NOSCRIPT
            return super().register_script(script)

        async def script_load(self, script: Any) -> Any:
            self._script_sources[_sha1(script)] = script  # SHA -> source, for NOSCRIPT
            return await super().script_load(script)

    return AgentRedisCluster


@cache
def _sync_cluster_class() -> type:
    from redis.cluster import RedisCluster

    class AgentSyncRedisCluster(RedisCluster):
        """``redis.cluster.RedisCluster`` whose pipelines accept Lua scripts (see above)."""

        _script_sources: dict[str, Any] = {}  # shared: a SHA names one source everywhere

        def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
            return _SyncScriptPipeline(self)

        def register_script(self, script: Any) -> Any:
            self._script_sources[_sha1(script)] = script  # SHA -> source, for NOSCRIPT
            return super().register_script(script)

        def script_load(self, script: Any) -> Any:
            self._script_sources[_sha1(script)] = script  # SHA -> source, for NOSCRIPT
            return super().script_load(script)

    return AgentSyncRedisCluster
