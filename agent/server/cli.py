"""``rundown-server``: the reference control server.

    rundown-server --queues queues.yml [--listen 127.0.0.1:8080] [--redis redis://127.0.0.1:6379/0]

Once it accepts requests it prints one line to stdout, ``rundown-server listening on <url>``
(so a script can start it with ``--listen 127.0.0.1:0`` and read the port). SIGINT / SIGTERM
stop it cleanly (uvicorn then exits with the signal's status, 130 / 143). Exit codes otherwise:
1 when it cannot listen or start, 2 for a bad queues file or option.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from agent import __version__
from agent.logs import redact_url, setup_logging
from agent.server.app import create_app
from agent.server.queues import QueuesFileError, load_queues_file
from agent.server.runner import bind_socket

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rundown-server",
        description="Reference control server for rundown-agent: worker registration, HTTP enqueue "
                    "API (asynq format), task status and queue stats.")
    parser.add_argument("--queues", required=True, metavar="FILE",
                        help="the queues file (YAML): queues, sub-queues, deployments, secrets, API keys")
    parser.add_argument("--listen", default=os.environ.get("RUNDOWN_SERVER_LISTEN", "127.0.0.1:8080"),
                        metavar="HOST:PORT", help="address to serve on (port 0: a free port); "
                        "default $RUNDOWN_SERVER_LISTEN or 127.0.0.1:8080")
    parser.add_argument("--redis", default=os.environ.get("RUNDOWN_SERVER_REDIS"), metavar="URL",
                        help="the server's Redis (default $RUNDOWN_SERVER_REDIS, the file's redis key, "
                             "or redis://127.0.0.1:6379/0)")
    parser.add_argument("--advertise-redis", metavar="URL",
                        help="the Redis URL workers are told to use (default: --redis)")
    parser.add_argument("--max-body-bytes", type=int, metavar="N", help="request body limit (default 1 MiB)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="auto", choices=["auto", "human", "json"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--check", action="store_true", help="validate the queues file and exit")
    parser.add_argument("--version", action="version", version=f"rundown-server {__version__}")
    return parser


def _split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {text!r}")
    return host, int(port)


def _drop_colour(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_drop_colour)
    try:
        host, port = _split_listen(args.listen)
    except ValueError as exc:
        print(f"rundown-server: {exc}", file=sys.stderr)
        return 2
    if args.max_body_bytes is not None and args.max_body_bytes < 1024:
        print("rundown-server: --max-body-bytes must be at least 1024", file=sys.stderr)
        return 2
    try:
        settings = load_queues_file(args.queues, redis_url=args.redis, advertise_redis=args.advertise_redis,
                                    max_body_bytes=args.max_body_bytes)
    except QueuesFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        for queue in settings.queues.values():
            subs = ", ".join(f"{n}={w}" for n, w in queue.sub_queues.items())
            print(f"{queue.name}: {subs} <- {redact_url(queue.deployment['git_url'])}")
        print(f"{len(settings.queues)} queues, {len(settings.api_keys)} API keys: OK")
        return 0
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        print(f"rundown-server: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def announce() -> None:  # the socket is listening already: connections wait in its backlog
        print(f"rundown-server listening on http://{shown}:{actual}", flush=True)

    app = create_app(settings, on_ready=announce)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=args.access_log))
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
