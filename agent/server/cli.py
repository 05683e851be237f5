"""``rundown-server``: the reference control server.

    rundown-server --queues queues.yml [--listen 127.0.0.1:8080] [--redis redis://127.0.0.1:6379/0]

Once it accepts requests it prints one line to stdout, ``rundown-server listening on <url>``
(so a script can start it with ``--listen 127.0.0.1:0`` and read the port). SIGINT / SIGTERM
stop it cleanly (requests finish, a ``--local-redis`` server is stopped) and it exits 130 /
143. Exit codes otherwise: 1 when it cannot listen or start, 2 for a bad queues file or option.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import click
import uvicorn

from agent import __version__
from agent.logs import redact_url, setup_logging
from agent.server.app import create_app
from agent.server.queues import QueuesFileError, ServerSettings, load_queues_file
from agent.server.runner import bind_socket

__all__ = ["main"]

log = logging.getLogger("server")

EXIT_START = 1  #: cannot listen, or the local redis-server did not start
EXIT_USAGE = 2  #: a bad option or queues file (click's own usage errors exit 2 too)


class QueuesFileProblems(click.ClickException):
    """The queues file did not load: prints its problem report, exits 2, no traceback."""

    exit_code = EXIT_USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, file=file or sys.stderr)


class CannotStart(click.ClickException):
    exit_code = EXIT_START

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"rundown-server: {self.message}", file=file or sys.stderr)


class ListenAddress(click.ParamType):
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0: a free one) as ``(host, port)``."""

    name = "HOST:PORT"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            self.fail(f"must be HOST:PORT, got {text!r}", param, ctx)
        return host, int(port)


class _Signalled(Exception):
    """SIGINT / SIGTERM, raised again by uvicorn after its graceful shutdown."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, _frame: object) -> None:
    raise _Signalled(signum)


def _drop_colour(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
    return True


@click.command(name="rundown-server", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--queues", "queues_file", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The queues file (YAML): queues, sub-queues, deployments, secrets, API keys.")
@click.option("--listen", default="127.0.0.1:8080", envvar="RUNDOWN_SERVER_LISTEN", show_envvar=True,
              show_default=True, type=ListenAddress(),
              help="Address to serve on (port 0: a free port).")
@click.option("--redis", "redis_url", envvar="RUNDOWN_SERVER_REDIS", show_envvar=True, metavar="URL",
              help="The server's Redis (default: the file's redis key, else redis://127.0.0.1:6379/0). "
                   "Give a password through the environment variable, not the command line.")
@click.option("--local-redis", is_flag=True,
              help="Start a throwaway redis-server on a free loopback port for this run (its data is "
                   "lost at exit): for trying the server out without a Redis of your own.")
@click.option("--advertise-redis", metavar="URL", help="The Redis URL workers are told to use (default: --redis).")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), metavar="N",
              help="Request body limit (default 1 MiB).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="auto", show_default=True, type=click.Choice(["auto", "human", "json"]),
              help="auto: human on a terminal, JSON lines otherwise.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--check", is_flag=True, help="Validate the queues file and exit.")
@click.version_option(__version__, "--version", prog_name="rundown-server", message="%(prog)s %(version)s")
@click.pass_context
def server_cli(ctx: click.Context, queues_file: Path, listen: tuple[str, int], redis_url: str | None,
               local_redis: bool, advertise_redis: str | None, max_body_bytes: int | None, log_level: str,
               log_format: str, access_log: bool, check: bool) -> None:
    """Reference control server for rundown-agent: worker registration, HTTP enqueue API (asynq
    format), task status and queue stats."""
    if local_redis and redis_url:
        raise click.UsageError("give --redis (or RUNDOWN_SERVER_REDIS) or --local-redis, not both")
    setup_logging(log_level, log_format)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_drop_colour)
    try:
        settings = load_queues_file(queues_file, redis_url=redis_url, advertise_redis=advertise_redis,
                                    max_body_bytes=max_body_bytes)
    except QueuesFileError as exc:
        raise QueuesFileProblems(str(exc)) from None
    if check:
        _report(settings)
        return
    for warning in settings.warnings:
        log.warning(warning)
    if not local_redis:
        ctx.exit(_serve(settings, listen, access_log))
    from agent.local_redis import LocalRedis

    redis = LocalRedis()
    try:
        redis.start()
    except (OSError, RuntimeError) as exc:
        raise CannotStart(f"cannot start a local redis-server: {exc}") from None
    try:
        log.info("throwaway Redis on %s (%s); its data is lost when the server stops", redis.url, redis.binary)
        code = _serve(settings.with_redis(redis.url), listen, access_log)
    finally:
        redis.stop()
    ctx.exit(code)


def _report(settings: ServerSettings) -> None:
    """``--check``: one line per queue, the warnings, and a summary."""
    for queue in settings.queues.values():
        subs = ", ".join(f"{n}={w}" for n, w in queue.sub_queues.items())
        click.echo(f"{queue.name}: {subs} <- {redact_url(queue.deployment['git_url'])}")
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{len(settings.queues)} queues, {len(settings.api_keys)} API keys: OK")


def _serve(settings: ServerSettings, listen: tuple[str, int], access_log: bool) -> int:
    host, port = listen
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise CannotStart(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def announce() -> None:  # the socket is listening already: connections wait in its backlog
        click.echo(f"rundown-server listening on http://{shown}:{actual}")
        sys.stdout.flush()

    app = create_app(settings, on_ready=announce)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=access_log))
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again with the
    # handlers it found: ours turn it into an exit code, so cleanups (--local-redis) still run.
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_signalled) for sig in stopping}
    try:
        server.run(sockets=[sock])
    except _Signalled as exc:
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else EXIT_START


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``rundown-server``); exits with the server's code."""
    server_cli.main(args=list(argv) if argv is not None else None, prog_name="rundown-server")


if __name__ == "__main__":  # pragma: no cover
    main()
