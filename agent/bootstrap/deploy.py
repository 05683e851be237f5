"""Deploy a queue's code: fetch a commit, export it, make its virtualenv, install its dependencies.

``deploy(spec, root_dir, git_cfg)`` is synchronous (it runs git and pip as subprocesses; from
asyncio code call it with ``await asyncio.to_thread(deploy, ...)``). Layout of one
deployment, ``<root_dir>/<queue>/``::

    repo.git/             bare repository, origin = the spec's URL without credentials
    code/<sha12>[-<h>]/   one exported commit (only code_path when set); never modified
    venvs/<key16>/        one virtualenv per install key (see agent.bootstrap.install)
    current.json          the last working deployment and the one before it
    .lock                 held while deploying (two agents on one directory take turns)

Every step is logged with its duration and bounded by a timeout. Nothing the current
deployment uses is changed or removed before a new one is complete, so a failure at any
step leaves the previous deployment intact; the error carries it as ``error.previous``. After a
success only the current and the previous deployment's directories are kept.

A spec with ``path`` (local mode) goes through the same function: the directory is used in
place (no copy), its virtualenv is managed and cached the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git

from agent.bootstrap.checkout import RepoCache, export_dir_name
from agent.bootstrap.errors import (
    CodePathError,
    DeploymentBusyError,
    DeploymentError,
    GitAuthError,
    GitError,
    GitRefNotFoundError,
    StepTimeoutError,
)
from agent.bootstrap.gitauth import GitAuth
from agent.bootstrap.install import ensure_venv, install, installed_key, plan_install, venv_python
from agent.bootstrap.models import Deployment, DeploymentSpec
from agent.config.model import GitConfig

__all__ = ["DEFAULT_FETCH_TIMEOUT", "DEFAULT_INSTALL_TIMEOUT", "DEFAULT_VENV_TIMEOUT",
           "current_deployment", "deploy"]

log = logging.getLogger(__name__)

DEFAULT_FETCH_TIMEOUT = 300.0  #: seconds for one git fetch / export
DEFAULT_VENV_TIMEOUT = 120.0  #: seconds to create a virtualenv
DEFAULT_INSTALL_TIMEOUT = 1200.0  #: seconds for the dependency install
DEFAULT_LOCK_TIMEOUT = 600.0  #: seconds to wait for another process deploying the same queue
STATE_FILE = "current.json"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def deploy(spec: DeploymentSpec, root_dir: Path | str, git_cfg: GitConfig | None = None, *,
           name: str | None = None, fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
           venv_timeout: float = DEFAULT_VENV_TIMEOUT, install_timeout: float = DEFAULT_INSTALL_TIMEOUT,
           lock_timeout: float = DEFAULT_LOCK_TIMEOUT, reuse_on_fetch_error: bool = False) -> Deployment:
    """Make ``spec``'s code runnable under ``root_dir/<name>`` and return it.

    Args:
        spec: what to deploy (from the server, or ``DeploymentSpec.from_config``).
        root_dir: the deployments' directory (config ``deployment.dir``).
        git_cfg: local git credentials (``ssh_key``, ``token``, ``known_hosts``,
            ``accept_new_host_keys``); a token in the spec (``git_token``) wins.
        name: the deployment's directory name; default the spec's queue.
        reuse_on_fetch_error: when the fetch fails for a reason other than credentials or a
            missing branch/commit (network down, timeout) and the last working deployment
            came from the same URL, branch, commit pin and code_path, return that one (with a
            warning) instead of raising.

    Raises:
        DeploymentError (a subclass per cause); ``error.previous`` is the last working
        deployment or None.
    """
    started = time.monotonic()
    label = name or spec.queue or "default"
    base = Path(root_dir).expanduser().resolve() / _dir_name(label)
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / ".lock", lock_timeout, label):
        state = _read_state(base)
        previous = _deployment_from(state.get("current"))
        try:
            deployment, export = _deploy(spec, base, label, git_cfg, fetch_timeout, venv_timeout,
                                         install_timeout, started)
        except (GitError, StepTimeoutError) as exc:
            if (reuse_on_fetch_error and previous is not None and not isinstance(
                    exc, (GitAuthError, GitRefNotFoundError))
                    and state["current"].get("identity") == _identity(spec)):
                log.warning("deploy %s: %s; using the last working deployment (commit %s)",
                            label, exc, previous.commit[:12])
                return previous
            exc.previous = previous
            raise
        except DeploymentError as exc:
            exc.previous = previous
            raise
        _write_state(base, deployment, export, spec, state.get("current"))
        _prune(base)
    log.info("deployed %s", label, extra={
        "commit": deployment.commit[:12], "installed": deployment.installed,
        "code_dir": str(deployment.code_dir),
        "timings": {k: round(v, 3) for k, v in deployment.timings.items()}})
    return deployment


def current_deployment(root_dir: Path | str, name: str) -> Deployment | None:
    """The last working deployment of ``name`` under ``root_dir`` (None if none is usable)."""
    base = Path(root_dir).expanduser().resolve() / _dir_name(name)
    return _deployment_from(_read_state(base).get("current"))


# -- the steps -----------------------------------------------------------------------------

def _deploy(spec: DeploymentSpec, base: Path, label: str, git_cfg: GitConfig | None,
            fetch_timeout: float, venv_timeout: float, install_timeout: float,
            started: float) -> tuple[Deployment, str | None]:
    timings: dict[str, float] = {}
    secrets: tuple[str, ...] = ()
    export: str | None = None
    if spec.path is not None:
        root = spec.path.expanduser().resolve()
        code_dir = root / spec.code_path if spec.code_path else root
        if not code_dir.is_dir():
            raise CodePathError(f"the deployment directory {code_dir} does not exist; check "
                                "deployment.path and deployment.code_path")
        commit = _local_commit(root)
        local = True
    else:
        assert spec.git_url is not None
        auth = _auth(spec, git_cfg)
        secrets = auth.secrets
        cache = RepoCache(base / "repo.git", auth, fetch_timeout)
        t = time.monotonic()
        commit = cache.fetch(spec.branch, spec.commit)
        timings["fetch"] = time.monotonic() - t
        log.info("deploy %s: fetched %s", label, spec.branch or "the default branch", extra={
            "url": auth.url, "commit": commit[:12], "duration_ms": _ms(timings["fetch"])})
        t = time.monotonic()
        export = export_dir_name(commit, spec.code_path)
        code_dir = cache.export(commit, spec.code_path, base / "code" / export)
        timings["checkout"] = time.monotonic() - t
        log.info("deploy %s: code at %s", label, code_dir, extra={"duration_ms": _ms(timings["checkout"])})
        local = False

    plan = plan_install(code_dir, spec.requirements, commit, local=local)
    venv_dir: Path | None
    installed = False
    if spec.venv == "none":
        venv_dir, python = None, Path(sys.executable)
        if plan.kind != "none":
            log.warning("deploy %s: venv is none, so %s is skipped; the code runs with the agent's "
                        "interpreter", label, plan.describe())
    else:
        managed = spec.venv == "auto"
        venv_dir = base / "venvs" / plan.key[:16] if managed else Path(spec.venv).expanduser()
        python = venv_python(venv_dir)
        if installed_key(venv_dir) != plan.key:
            t = time.monotonic()
            ensure_venv(venv_dir, venv_timeout, managed=managed)
            timings["venv"] = time.monotonic() - t
            t = time.monotonic()
            install(venv_dir, plan, code_dir, install_timeout, secrets=secrets)
            timings["install"] = time.monotonic() - t
            installed = True
            log.info("deploy %s: installed dependencies (%s)", label, plan.describe(), extra={
                "venv": str(venv_dir), "venv_ms": _ms(timings["venv"]),
                "install_ms": _ms(timings["install"])})
        else:
            log.info("deploy %s: dependencies unchanged, virtualenv reused", label,
                     extra={"venv": str(venv_dir)})
    timings["total"] = time.monotonic() - started
    deployment = Deployment(queue=spec.queue or label, code_dir=code_dir, venv_dir=venv_dir,
                            python=python, commit=commit, installed=installed, timings=timings,
                            requirements_hash=plan.key, source=spec.source)
    return deployment, export


def _auth(spec: DeploymentSpec, git_cfg: GitConfig | None) -> GitAuth:
    token = spec.git_token.reveal() if spec.git_token else None
    if token is None and git_cfg is not None and git_cfg.token is not None:
        token = git_cfg.token.reveal() or None
    assert spec.git_url is not None
    return GitAuth.for_url(
        spec.git_url, token=token,
        ssh_key=git_cfg.ssh_key if git_cfg else None,
        known_hosts=git_cfg.known_hosts if git_cfg else None,
        accept_new_host_keys=git_cfg.accept_new_host_keys if git_cfg else False)


def _local_commit(root: Path) -> str:
    try:
        repo = git.Repo(root, search_parent_directories=True)
        return repo.head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError, ValueError):
        return ""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _dir_name(name: str) -> str:
    safe = _SAFE_NAME.sub("_", name)
    if safe in ("", ".", ".."):
        raise DeploymentError(f"{name!r} cannot name a deployment directory")
    return safe


# -- state: the last working deployment ----------------------------------------------------

def _identity(spec: DeploymentSpec) -> dict[str, Any]:
    return {"source": spec.source, "branch": spec.branch, "commit": spec.commit,
            "code_path": spec.code_path, "venv": spec.venv, "requirements": spec.requirements}


def _read_state(base: Path) -> dict[str, Any]:
    try:
        data = json.loads((base / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _deployment_from(record: Any) -> Deployment | None:
    if not isinstance(record, dict):
        return None
    try:
        venv = Path(record["venv_dir"]) if record.get("venv_dir") else None
        deployment = Deployment(
            queue=record["queue"], code_dir=Path(record["code_dir"]), venv_dir=venv,
            python=Path(record["python"]), commit=record["commit"], installed=False,
            timings={}, requirements_hash=record.get("requirements_hash"), source=record.get("source", ""))
    except (KeyError, TypeError):
        return None
    if not deployment.code_dir.is_dir() or not deployment.python.exists():
        return None
    if venv is not None and installed_key(venv) != deployment.requirements_hash:
        return None
    return deployment


def _write_state(base: Path, deployment: Deployment, export: str | None, spec: DeploymentSpec,
                 current: Any) -> None:
    record = {
        "queue": deployment.queue, "code_dir": str(deployment.code_dir),
        "venv_dir": str(deployment.venv_dir) if deployment.venv_dir else None,
        "python": str(deployment.python), "commit": deployment.commit,
        "requirements_hash": deployment.requirements_hash, "source": deployment.source,
        "export": export, "identity": _identity(spec), "deployed_at": time.time(),
    }
    previous = current if isinstance(current, dict) else None
    if previous is not None and previous.get("code_dir") == record["code_dir"] and \
            previous.get("venv_dir") == record["venv_dir"]:
        previous = _read_state(base).get("previous")  # a restart: keep the older one too
    tmp = base / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"current": record, "previous": previous}, indent=2))
    os.replace(tmp, base / STATE_FILE)


def _prune(base: Path) -> None:
    """Remove exports and managed virtualenvs that neither the current nor the previous
    deployment uses (and leftovers of interrupted deploys)."""
    state = _read_state(base)
    keep_code: set[str] = set()
    keep_venvs: set[str] = set()
    for record in (state.get("current"), state.get("previous")):
        if isinstance(record, dict):
            if record.get("export"):
                keep_code.add(record["export"])
            if record.get("venv_dir"):
                keep_venvs.add(Path(record["venv_dir"]).name)
    for folder, keep in ((base / "code", keep_code), (base / "venvs", keep_venvs)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name not in keep:
                log.debug("removing unused %s", entry)
                shutil.rmtree(entry, ignore_errors=True)


# -- lock ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path, timeout: float, label: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise DeploymentBusyError(
                        f"another process has been deploying {label!r} in {path.parent} for more than "
                        f"{timeout:g} s; wait for it or stop it") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock
