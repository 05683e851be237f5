"""The ``rundown-agent`` command line: ``-config FILE``, ``-validate``, ``-version``.

Flags are spelled Go-style with one dash, as runqy-worker's are, and also with two dashes
(``-config x.yml`` = ``--config x.yml`` = ``--config=x.yml``). The program is a click group, so
subcommands (``rundown-agent demo``) can be added with ``@cli.command()``; they reach the shared
flags through :class:`CliOptions` in ``ctx.obj``.

Exit codes: 0 success, 1 configuration problems, 2 usage error or runtime missing from the build,
otherwise whatever the runtime returns (130 after Ctrl-C).
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import click

import agent
from agent.config import Config, ConfigError, load_config

__all__ = ["CliOptions", "cli", "main"]

DEFAULT_CONFIG = Path("config.yml")
EXIT_CONFIG = 1
EXIT_NO_RUNTIME = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger(__name__)


class ConfigProblems(click.ClickException):
    """The configuration did not load: prints the problem report, exits 1, no traceback."""

    exit_code = EXIT_CONFIG

    def __init__(self, error: ConfigError) -> None:
        super().__init__(error.report())
        self.error = error

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.error.report(), file=file or sys.stderr)


class RuntimeUnavailable(click.ClickException):
    exit_code = EXIT_NO_RUNTIME

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"rundown-agent: the agent runtime is not available in this build\n  ({self.message})",
                   file=file or sys.stderr)


@dataclass(frozen=True)
class CliOptions:
    """The top-level flags, for subcommands: ``ctx.find_object(CliOptions).load()``."""

    config_path: Path | None
    log_level: str | None = None
    log_format: str | None = None

    def load(self) -> Config:
        """Load and validate the configuration, applying ``-log-level`` / ``-log-format``.

        Raises:
            ConfigProblems: a click exception that prints the report and exits 1.
        """
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            raise ConfigProblems(exc) from None
        overrides = {k: v for k, v in (("level", self.log_level), ("format", self.log_format)) if v}
        if overrides:
            config = replace(config, logging=replace(config.logging, **overrides))
        return config


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"rundown-agent {agent.__version__}")
    click.echo(f"  python:  {platform.python_version()} ({platform.python_implementation()})")
    ctx.exit(0)


class AgentGroup(click.Group):
    """Rewrites a mistyped single-dash flag (``-validat``) to its two-dash form before parsing, so
    click reports "No such option: --validat" with a suggestion instead of "No such option: -v"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _normalise(args, self.params))


def _normalise(args: list[str], params: list[click.Parameter]) -> list[str]:
    known: set[str] = set()
    takes_value: set[str] = set()
    for param in params:
        if isinstance(param, click.Option):
            names = [*param.opts, *param.secondary_opts]
            known.update(names)
            if not param.is_flag:
                takes_value.update(names)
    out = list(args)
    i = 0
    while i < len(out):
        token = out[i]
        if token == "--" or not token.startswith("-") or token == "-":
            break  # the subcommand (or a positional) starts here: leave its arguments alone
        name = token.split("=", 1)[0]
        if not token.startswith("--") and len(name) > 2 and name not in known:
            out[i] = "-" + token
        elif name in takes_value and "=" not in token:
            i += 1
        i += 1
    return out


@click.group(cls=AgentGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.option("-config", "--config", "config_path", metavar="FILE", envvar="RUNDOWN_CONFIG", show_envvar=True,
              type=click.Path(path_type=Path),
              help="YAML config file [default: ./config.yml if it exists, else environment only].")
@click.option("-validate", "--validate", is_flag=True,
              help="Check the configuration, print a summary and exit; contacts nothing.")
@click.option("-version", "--version", is_flag=True, is_eager=True, expose_value=False,
              callback=_print_version, help="Print the version and exit.")
@click.option("-log-level", "--log-level", type=click.Choice(["debug", "info", "warning", "error"],
              case_sensitive=False), help="Override logging.level.")
@click.option("-log-format", "--log-format", type=click.Choice(["auto", "human", "json"]),
              help="Override logging.format (auto: human on a TTY, JSON lines otherwise).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, validate: bool, log_level: str | None,
        log_format: str | None) -> None:
    """rundown-agent: a worker agent for asynq-format Redis task queues."""
    if config_path is None and DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
    options = CliOptions(config_path, log_level.lower() if log_level else None, log_format)
    ctx.obj = options
    if ctx.invoked_subcommand is not None:
        return
    config = options.load()
    if validate:
        click.echo(_summary(config, config_path))
        return
    ctx.exit(_run(config))


def _run(config: Config) -> int:
    from agent.logs import setup_logging

    setup_logging(config.logging.level, config.logging.format)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    try:
        from agent.runtime.app import run
    except ImportError as exc:
        raise RuntimeUnavailable(f"{type(exc).__name__}: {exc}") from None
    try:
        return int(run(config) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _summary(config: Config, path: Path | None) -> str:
    """What ``-validate`` prints; every URL through :func:`agent.logs.redact_url` (credentials
    masked), no secret field at all."""
    from agent.config import capacity_summary, format_duration
    from agent.config.placement import placement_summary
    from agent.logs import redact_url

    lines = [f"config OK: {path if path is not None else '(environment only)'}",
             f"  {capacity_summary(config)}"]
    if config.local_mode:
        dep, redis = config.deployment, config.redis
        code = f"git {redact_url(dep.git_url)}@{dep.commit or dep.branch}" if dep.git_url else f"path {dep.path}"
        redis_url = redis.display_url if redis is not None else "-"
        lines.append(f"  mode: local (redis {redis_url}; code {code}; {dep.mode})")
    else:
        lines.append(f"  mode: server ({redact_url(config.server.url or '-')})")
    queues = []
    for q in config.worker.queues:
        limit = f", limit {q.concurrency}" if q.concurrency is not None else ""
        for key, value in q.flow.as_dict().items():  # fleet-wide flow limits
            shown = ", ".join(f"{t} {spec['rate']}" for t, spec in value.items()) if key == "types" else value
            limit += f", {key} {shown}"
        queues.append(f"{q.name} (weight {q.weight}{limit})")
    order = "strict priority" if config.worker.strict_priority else "weighted"
    lines.append(f"  queues ({order}): {', '.join(queues)}")
    lines.extend(f"  {line}" for line in placement_summary(config))
    lines.append(f"  shutdown timeout: {format_duration(config.worker.shutdown_timeout)}")
    lines.append(f"  ops: {config.ops.listen or 'off'}")
    lines.extend(f"  warning: {w}" for w in config.warnings)
    return "\n".join(lines)


@click.command("demo")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The demo's directory, kept between runs (agent log, config, deployment "
                   "cache); default $XDG_CACHE_HOME/rundown-agent/demo.")
@click.option("--fresh", is_flag=True, help="Empty the demo's directory first (a first run: the "
                                            "virtualenv is built again).")
def demo_command(workdir: Path | None, fresh: bool) -> None:
    """Run the whole system locally: Redis, control server, agent, tasks and results."""
    from agent.demo import run_demo

    raise SystemExit(run_demo(workdir, fresh=fresh))


def _mount_subcommands() -> None:
    from agent.inspect.cli import inspect_cli

    cli.add_command(inspect_cli, "inspect")
    cli.add_command(demo_command)


_mount_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``rundown-agent``)."""
    cli.main(args=argv, prog_name="rundown-agent")


if __name__ == "__main__":
    main()
