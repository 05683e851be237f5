"""The virtualenv of a deployment and its dependencies, cached by what decides them.

What gets installed (:func:`plan_install`), in the code directory:

1. the spec's ``requirements`` file, else ``requirements.txt``: ``pip install -r <file>``
   (options inside the file work, e.g. ``--no-index`` / ``--find-links``);
2. else a ``pyproject.toml`` (PEP 621 ``[project]`` or ``[tool.poetry]``) or ``setup.py``: the
   project itself, ``pip install .`` (``pip install -e .`` for a local directory);
3. else nothing (the virtualenv still isolates the code from the agent's packages).

The **install key** is a hash of the Python interpreter, the plan and the requirements files'
content (``-r`` / ``-c`` includes followed). It also holds the commit when what is installed
comes from the repository itself (the project, or ``-e .`` / ``./pkg`` / ``file:`` lines),
because then a new commit means new installed code. A virtualenv records the key it was
installed for; a deploy with the same key reuses it untouched (``installed=False``). So a
new commit with unchanged requirements reuses the virtualenv, and a warm restart costs no pip.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bootstrap.errors import DeploymentError, InstallError, StepTimeoutError, VirtualenvError

__all__ = ["InstallPlan", "MARKER", "ensure_venv", "install", "installed_key", "plan_install",
           "venv_python"]

log = logging.getLogger(__name__)

MARKER = ".rundown-install.json"  #: inside a virtualenv: the install key it holds
TAIL_LINES = 15
_LOCAL_REQUIREMENT = re.compile(r"^\s*(-e\s+|--editable\s+)?(\.{1,2}(/|$)|/|file:)", re.IGNORECASE)
_INCLUDE = re.compile(r"^\s*(-r|--requirement|-c|--constraint)\s*=?\s*(\S+)")
_SCRUBBED_PREFIXES = ("RUNDOWN_", "RUNQY_")
_SCRUBBED = frozenset({"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER"})


@dataclass(frozen=True)
class InstallPlan:
    """``kind`` is ``requirements``, ``project`` or ``none``; ``key`` the install key."""

    kind: str
    key: str
    file: Path | None = None  #: the requirements file (kind ``requirements``)
    editable: bool = False  #: kind ``project``: install with ``-e``

    def describe(self) -> str:
        if self.kind == "requirements" and self.file is not None:
            return f"pip install -r {self.file.name}"
        if self.kind == "project":
            return "pip install -e ." if self.editable else "pip install ."
        return "nothing to install"


def plan_install(code_dir: Path, requirements: str | None, commit: str, *, local: bool) -> InstallPlan:
    """What to install for the code in ``code_dir`` and its key (see the module doc)."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}|{sys.implementation.cache_tag}|{_base_python()}".encode())
    if requirements is not None:
        file = code_dir / requirements
        if not file.is_file():
            raise DeploymentError(f"requirements file {requirements!r} not found in the code "
                                  f"directory {code_dir}; check deployment.requirements")
    else:
        file = code_dir / "requirements.txt"
    if file.is_file():
        refers_to_code = _hash_requirements(file, digest, set())
        digest.update(b"requirements")
        if refers_to_code and not local:
            digest.update(commit.encode())
        return InstallPlan("requirements", digest.hexdigest(), file=file)
    if _is_project(code_dir):
        digest.update(b"project-editable" if local else b"project")
        if not local:
            digest.update(commit.encode())
        for name in ("pyproject.toml", "setup.py", "setup.cfg"):
            if (code_dir / name).is_file():
                digest.update((code_dir / name).read_bytes())
        return InstallPlan("project", digest.hexdigest(), editable=local)
    digest.update(b"none")
    return InstallPlan("none", digest.hexdigest())


def _hash_requirements(file: Path, digest: Any, seen: set[Path]) -> bool:
    """Add the file (and its includes) to ``digest``; True if it installs local paths."""
    resolved = file.resolve()
    if resolved in seen:
        return False
    seen.add(resolved)
    data = file.read_bytes()
    digest.update(str(len(data)).encode() + b":" + data)
    local = False
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.split(" #", 1)[0].strip()
        if _LOCAL_REQUIREMENT.match(line):
            local = True
        include = _INCLUDE.match(line)
        if include:
            target = file.parent / include.group(2)
            if target.is_file():
                local = _hash_requirements(target, digest, seen) or local
    return local


def _is_project(code_dir: Path) -> bool:
    if (code_dir / "setup.py").is_file():
        return True
    pyproject = code_dir / "pyproject.toml"
    if not pyproject.is_file():
        return False
    text = pyproject.read_text("utf-8", "replace")
    return bool(re.search(r"^\[(project|tool\.poetry)\]", text, re.MULTILINE))


def _base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def installed_key(venv_dir: Path) -> str | None:
    """The install key a virtualenv was completed for, or None (incomplete / not ours)."""
    try:
        data = json.loads((venv_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    key = data.get("key") if isinstance(data, dict) else None
    return key if isinstance(key, str) and venv_python(venv_dir).exists() else None


def ensure_venv(venv_dir: Path, timeout: float, *, managed: bool) -> bool:
    """Make sure ``venv_dir`` is a virtualenv; True if it was created now.

    A managed virtualenv (under the deployment directory) that was left incomplete by an
    earlier failed deploy is removed and made again.
    """
    if venv_python(venv_dir).exists() and (not managed or installed_key(venv_dir) is not None):
        return False
    if managed and venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "virtualenv", "--quiet", "--no-periodic-update", "--no-vcs-ignore",
            str(venv_dir)]
    code, lines = run_step(argv, cwd=venv_dir.parent, env=clean_environment(), timeout=timeout,
                           step=f"creating the virtualenv {venv_dir}")
    if code != 0 or not venv_python(venv_dir).exists():
        raise VirtualenvError(f"creating the virtualenv {venv_dir} failed (exit {code}): "
                              + ("; ".join(lines[-3:]) or "no output"))
    return True


def install(venv_dir: Path, plan: InstallPlan, code_dir: Path, timeout: float,
            secrets: Iterable[str | None] = ()) -> None:
    """Run pip for ``plan`` in the virtualenv; record the key when it succeeded."""
    python = venv_python(venv_dir)
    if plan.kind != "none":
        argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        if plan.kind == "requirements":
            assert plan.file is not None
            argv += ["-r", str(plan.file)]
        else:
            argv += ["-e", "."] if plan.editable else ["."]
        env = clean_environment()
        env["VIRTUAL_ENV"] = str(venv_dir)
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', os.defpath)}"
        code, lines = run_step(argv, cwd=code_dir, env=env, timeout=timeout,
                               step=f"dependency install ({plan.describe()})")
        if code != 0:
            raise InstallError(f"dependency install failed ({plan.describe()} exited with {code}) "
                               f"in {code_dir}; pip's last lines:",
                               output_tail="\n".join(lines[-TAIL_LINES:]), secrets=secrets)
    marker = venv_dir / MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": plan.key, "plan": plan.describe(), "installed_at": time.time()}))
    os.replace(tmp, marker)


def clean_environment() -> dict[str, str]:
    """The agent's environment without its own settings and credentials (``RUNDOWN_*``)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED}


def run_step(argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float,
             step: str) -> tuple[int, list[str]]:
    """Run a command in its own process group; (exit code, last output lines).

    stdout and stderr are merged and logged at DEBUG; on timeout the whole group is killed and
    :class:`StepTimeoutError` raised.
    """
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise StepTimeoutError(step, timeout) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    tail: collections.deque[str] = collections.deque(maxlen=200)
    for raw in out.decode("utf-8", "replace").splitlines():
        if raw.strip():
            tail.append(raw.rstrip())
            log.debug("[%s] %s", argv[2] if len(argv) > 2 else argv[0], raw.rstrip())
    return proc.returncode, list(tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
