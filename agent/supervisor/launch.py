"""How a child process is launched: its spec, command line, environment and resource limits."""

from __future__ import annotations

import atexit
import hashlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.supervisor.protocol import DEFAULT_LINE_LIMIT, PROTOCOL_VERSION
from task_sdk.rlimits import apply_rlimits

INHERITED_VARIABLES = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME")
"""Variables a child inherits from the agent (plus every ``LC_*``); nothing else leaks."""

PYTHON_NAMES = frozenset({"python", "python3", "python.exe", "python3.exe"})


class StartupCommandError(ValueError):
    """The deployment's startup command cannot be run as given."""


@dataclass(frozen=True)
class ChildSpec:
    """Everything needed to start and supervise the children of one queue (or deployment).

    * ``argv``, ``cwd``, ``env``: the command (see ``resolve_argv``), the code directory and the
      complete environment (see ``build_child_env``); the protocol variables are added on top.
    * ``startup_timeout``: seconds the child has to report ready (``@load`` included).
    * ``threads``: handler threads per child for sync handlers (``RUNDOWN_SYNC_THREADS``). A
      child with any sync handler runs this many handlers at once (its slots).
    * ``async_limit``: async handlers at once in a child whose handlers are all async
      (``RUNDOWN_ASYNC_LIMIT``); such a child has this many slots.
    * ``prefetch``: tasks a child may hold beyond its busy slots, waiting in the child for a
      slot (their timeout starts when they start). A runqy-style child gets none.
    * ``max_tasks_per_child``: recycle a child after this many tasks (0: never).
    * ``max_memory_bytes``: recycle a child whose RSS exceeds this, checked after each task.
    * ``rlimit_as_bytes``, ``rlimit_cpu_seconds``: one_shot children only: RLIMIT_AS and
      RLIMIT_CPU set in the child before it executes the command.
    * ``line_limit``: longest line accepted from a child's protocol channel or stdout
      (bytes); longer ones are discarded with an error, and a response that long fails its
      task.
    * ``queue``: for logs and error texts.
    * ``stop_grace``: seconds between SIGTERM and SIGKILL when a child is stopped.
    * ``deadline_grace``: seconds after a task's deadline before the agent gives up on the
      answer and stops the child (task_sdk cancels async handlers at the deadline itself).
    * ``stderr_lines``: how many last stderr lines are kept for diagnosis.
    * ``on_progress``: called as ``(task_id, queue, fraction, message)`` for each progress
      report of a task a child runs (``agent.supervisor.progress``); None ignores them.
    * ``gpu``: the device this child sees (``CUDA_VISIBLE_DEVICES``), or None.
    """

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)  # holds secrets: never shown
    startup_timeout: float = 60.0
    threads: int = 1
    async_limit: int = 1
    prefetch: int = 0
    max_tasks_per_child: int = 0
    max_memory_bytes: int | None = None
    rlimit_as_bytes: int | None = None
    rlimit_cpu_seconds: int | None = None
    line_limit: int = DEFAULT_LINE_LIMIT
    queue: str = ""
    stop_grace: float = 10.0
    deadline_grace: float = 0.25
    stderr_lines: int = 50
    on_progress: Callable[[str, str, float, str], None] | None = field(
        default=None, compare=False, repr=False)
    gpu: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.argv:
            problems.append("argv is empty")
        if self.startup_timeout <= 0:
            problems.append(f"startup_timeout must be > 0, got {self.startup_timeout}")
        if self.threads < 1 or self.async_limit < 1:
            problems.append(f"threads and async_limit must be >= 1, got {self.threads} "
                            f"and {self.async_limit}")
        if self.prefetch < 0:
            problems.append(f"prefetch must be >= 0, got {self.prefetch}")
        if self.max_tasks_per_child < 0:
            problems.append(f"max_tasks_per_child must be >= 0, got {self.max_tasks_per_child}")
        if self.line_limit < 1024:
            problems.append(f"line_limit must be at least 1024 bytes, got {self.line_limit}")
        if self.stop_grace < 0 or self.deadline_grace < 0:
            problems.append("stop_grace and deadline_grace must be >= 0")
        if problems:
            raise ValueError(f"invalid child spec for queue {self.queue!r}: {'; '.join(problems)}")

    def process_env(self) -> dict[str, str]:
        """``env`` plus the protocol variables the agent owns."""
        env = dict(self.env)
        env["RUNDOWN_PROTOCOL"] = str(PROTOCOL_VERSION)
        env["RUNDOWN_SYNC_THREADS"] = str(self.threads)
        env["RUNDOWN_ASYNC_LIMIT"] = str(self.async_limit)
        env["RUNDOWN_MAX_IN_FLIGHT"] = str(self.async_limit)  # task_sdk before slots
        if self.gpu is not None:  # exactly one device, whatever the deployment's variables say
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env


def resolve_argv(
    startup_cmd: str, venv_dir: Path | None, *, search_path: str | None = None
) -> list[str]:
    """The startup command as an argument list, with its executable resolved.

    Split with shell rules (``shlex``: quotes and backslashes, no variables, no operators).
    ``python`` / ``python3`` become the virtualenv's interpreter (the agent's own interpreter
    when ``venv_dir`` is None). Another bare name is looked up in the virtualenv's ``bin``
    first, then on ``search_path`` (default: the agent's ``PATH``). A path containing ``/``
    is kept: a relative one is relative to the code directory.
    """
    try:
        argv = shlex.split(startup_cmd)
    except ValueError as exc:
        raise StartupCommandError(
            f"startup command {startup_cmd!r} cannot be parsed: {exc}"
        ) from None
    if not argv:
        raise StartupCommandError(
            "startup command is empty: set the deployment's startup command, "
            "for example 'python worker.py'"
        )
    executable = argv[0]
    if executable in PYTHON_NAMES:
        argv[0] = str(venv_dir / "bin" / "python") if venv_dir else sys.executable
    elif "/" not in executable:
        candidate = venv_dir / "bin" / executable if venv_dir else None
        if candidate is not None and os.access(candidate, os.X_OK):
            argv[0] = str(candidate)
        else:
            found = shutil.which(executable, path=search_path)
            if found is None:
                where = "the virtualenv's bin directory or PATH" if venv_dir else "PATH"
                raise StartupCommandError(
                    f"startup command executable {executable!r} was not found in {where}; "
                    "install it in the deployment's requirements or use a path"
                )
            argv[0] = found
    return argv


def build_child_env(
    deployment_env: Mapping[str, object],
    secrets: Mapping[str, object],
    venv_dir: Path | None,
    *,
    inherit: Iterable[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's complete environment, built explicitly.

    A few variables are inherited from the agent (``INHERITED_VARIABLES``, every ``LC_*``,
    plus ``inherit``); then the deployment's variables, then the secrets (which win). The
    agent's own credentials are not passed on unless the deployment names them. Then:
    the virtualenv's ``bin`` goes first on ``PATH`` and ``VIRTUAL_ENV`` is set,
    ``PYTHONUNBUFFERED=1`` (unless the deployment sets it), and ``PYTHONPATH`` gets a
    directory holding a private copy of ``task_sdk`` appended, so the deployed code can
    ``import task_sdk`` without installing it (a copy, not the agent's own site-packages,
    so none of the agent's dependencies shadow the deployment's).
    """
    base = os.environ if base_env is None else base_env
    wanted = set(INHERITED_VARIABLES) | set(inherit)
    env = {k: v for k, v in base.items() if k in wanted or k.startswith("LC_")}
    env.update({str(k): str(v) for k, v in deployment_env.items()})
    env.update({str(k): str(v) for k, v in secrets.items()})
    path = env.get("PATH") or os.defpath
    if venv_dir is not None:
        env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{path}"
        env["VIRTUAL_ENV"] = str(venv_dir)
    else:
        env["PATH"] = path
    env.setdefault("PYTHONUNBUFFERED", "1")
    sdk = str(sdk_import_dir())
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{existing}{os.pathsep}{sdk}" if existing else sdk
    return env


_SDK_SOURCE = Path(__file__).resolve().parent.parent.parent / "task_sdk"
_sdk_copy: Path | None = None


def sdk_import_dir() -> Path:
    """A directory that holds only a copy of ``task_sdk``, for the children's ``PYTHONPATH``.

    It lives in the user's cache (``$XDG_CACHE_HOME/rundown-agent/task_sdk-<content hash>``),
    where temp-file cleaners do not remove it from under a long-running agent; a private
    temporary directory is the fallback when the cache is not writable.
    """
    global _sdk_copy
    if _sdk_copy is not None and (_sdk_copy / "task_sdk" / "__init__.py").is_file():
        return _sdk_copy
    if not (_SDK_SOURCE / "__init__.py").is_file():
        raise RuntimeError(
            f"task_sdk is missing next to the agent package (looked in {_SDK_SOURCE})"
        )
    try:
        _sdk_copy = _cached_copy()
    except OSError:
        root = Path(tempfile.mkdtemp(prefix="rundown-task-sdk-"))
        _copy_sdk(root / "task_sdk")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _sdk_copy = root
    return _sdk_copy


def _cached_copy() -> Path:
    digest = hashlib.sha256()
    for source in sorted(_SDK_SOURCE.glob("*.py")) + sorted(_SDK_SOURCE.glob("*.typed")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rundown-agent"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = cache / f"task_sdk-{digest.hexdigest()[:16]}"
    if not (root / "task_sdk" / "__init__.py").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
        _copy_sdk(staging / "task_sdk")
        try:
            staging.rename(root)
        except OSError:  # another agent got there first (or a stale partial copy is in the way)
            shutil.rmtree(staging, ignore_errors=True)
            if not (root / "task_sdk" / "__init__.py").is_file():
                raise
    return root


def _copy_sdk(target: Path) -> None:
    shutil.copytree(_SDK_SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def rlimit_setter(spec: ChildSpec) -> Callable[[], None] | None:
    """A ``preexec_fn`` applying the spec's rlimits in the child, or None if it has none."""
    if not spec.rlimit_as_bytes and not spec.rlimit_cpu_seconds:
        return None
    address_space, cpu_seconds = spec.rlimit_as_bytes, spec.rlimit_cpu_seconds

    def apply() -> None:  # runs in the forked child: keep it to plain system calls
        apply_rlimits(address_space, cpu_seconds)

    return apply

