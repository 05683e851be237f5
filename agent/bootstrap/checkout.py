"""Getting one commit of a git repository onto disk, with GitPython.

A deployment keeps a bare repository (``repo.git``) whose ``origin`` is the spec's URL without
credentials. Each deploy fetches only what it needs (``--depth 1`` of the branch, tag or pinned
commit; an abbreviated commit falls back to the branch's full history), then exports the
commit's tree (or only ``code_path``) with ``git archive`` into a fresh directory that is
renamed into place when complete. A changed URL or branch is simply fetched: nothing of an
older checkout can leak into the new one, and the older export stays intact for as long as it
is the last working deployment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import git

from agent.bootstrap.errors import (
    CodePathError,
    GitAuthError,
    GitError,
    GitRefNotFoundError,
    StepTimeoutError,
)
from agent.bootstrap.gitauth import GitAuth

__all__ = ["RepoCache", "export_dir_name"]

log = logging.getLogger(__name__)

_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_AUTH_PATTERNS = ("authentication failed", "could not read username", "could not read password",
                  "terminal prompts disabled", "access denied", "permission denied (publickey",
                  "returned error: 401", "returned error: 403", "invalid username or password",
                  "repository not found")
_REF_PATTERNS = ("couldn't find remote ref", "not our ref", "unadvertised object",
                 "remote did not send all necessary objects")


def export_dir_name(commit: str, code_path: str) -> str:
    """The directory name of an exported commit: ``<sha12>`` or ``<sha12>-<hash of code_path>``."""
    if not code_path:
        return commit[:12]
    return f"{commit[:12]}-{hashlib.sha256(code_path.encode()).hexdigest()[:8]}"


class RepoCache:
    """The bare repository of one deployment directory, and the exports made from it."""

    def __init__(self, path: Path, auth: GitAuth, timeout: float) -> None:
        self.path = path
        self.auth = auth
        self.timeout = timeout
        self._repo: git.Repo | None = None

    # -- repository ---------------------------------------------------------------------

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if (self.path / "HEAD").is_file():
                try:
                    self._repo = git.Repo(self.path)
                except git.InvalidGitRepositoryError:
                    shutil.rmtree(self.path)
            if self._repo is None:
                self.path.mkdir(parents=True, exist_ok=True)
                self._repo = git.Repo.init(self.path, bare=True)
                with self._repo.config_writer() as cfg:
                    cfg.set_value("gc", "auto", "0")  # no gc pauses in the middle of a start
        return self._repo

    def set_origin(self) -> bool:
        """Point ``origin`` at the spec's URL; True when it changed (or was created)."""
        repo = self.repo
        if "origin" in [r.name for r in repo.remotes]:
            origin = repo.remote("origin")
            if origin.url == self.auth.url:
                return False
            log.info("repository URL changed", extra={"url": self.auth.url})
            self._git("remote", "set-url", "origin", self.auth.url)
            return True
        self._git("remote", "add", "origin", self.auth.url)
        return True

    def has_commit(self, rev: str) -> str | None:
        """The full SHA of ``rev`` when it is a commit already in the repository."""
        try:
            return self.repo.git.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}").strip() or None
        except git.GitCommandError:
            return None

    def fetch(self, branch: str | None, commit: str | None) -> str:
        """Fetch what the spec names and return the commit's full SHA."""
        self.set_origin()
        if commit:
            commit = commit.lower()
            if _FULL_SHA.fullmatch(commit):
                known = self.has_commit(commit)
                if known:
                    return known  # a pinned commit never changes: no network needed
                try:
                    self._fetch(["--depth", "1", "origin", commit], what=f"commit {commit[:12]}")
                    sha = self.has_commit("FETCH_HEAD")
                    if sha == commit:
                        return sha
                except GitRefNotFoundError:
                    pass  # the server refuses fetching by SHA: look in the branch's history
            ref = branch or "HEAD"
            args = ["origin", ref]
            if self._is_shallow():
                args.insert(0, "--unshallow")
            self._fetch(args, what=f"branch {ref!r}")
            sha = self.has_commit(commit)
            if sha is None:
                raise GitRefNotFoundError(
                    f"commit {commit!r} not found in {self.auth.url} (searched branch {ref!r}); "
                    "check deployment.commit", secrets=self.auth.secrets)
            return sha
        ref = branch or "HEAD"
        self._fetch(["--depth", "1", "origin", ref],
                    what=f"branch {ref!r}" if branch else "the default branch")
        sha = self.has_commit("FETCH_HEAD")
        if sha is None:  # pragma: no cover - git would have failed first
            raise GitError(f"git fetch of {self.auth.url} gave no commit for {ref!r}")
        return sha

    def _is_shallow(self) -> bool:
        return (self.path / "shallow").is_file()

    def _fetch(self, args: Sequence[str], what: str) -> None:
        log.debug("git fetch %s", " ".join(args), extra={"url": self.auth.url})
        try:
            self._git("fetch", "--no-tags", "--prune", *args, timeout=self.timeout)
        except git.GitCommandError as exc:
            raise self._classify(exc, f"git fetch of {what} from {self.auth.url}", what) from None

    # -- export -------------------------------------------------------------------------

    def export(self, commit: str, code_path: str, dest: Path) -> Path:
        """Write the commit's tree (or ``code_path`` of it) to ``dest``; return the code dir.

        ``dest`` is created complete or not at all (a temporary directory renamed into place).
        An existing ``dest`` is reused as is.
        """
        code_dir = dest / code_path if code_path else dest
        if dest.is_dir():
            return code_dir
        if code_path:
            kind = self._object_type(f"{commit}:{code_path}")
            if kind != "tree":
                what = "is a file, not a directory" if kind else "does not exist"
                raise CodePathError(f"code_path {code_path!r} {what} in commit {commit[:12]} of "
                                    f"{self.auth.url}; check deployment.code_path",
                                    secrets=self.auth.secrets)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            archive = tmp / ".archive.tar"
            args = ["archive", "--format=tar", commit]
            if code_path:
                args += ["--", code_path]
            with archive.open("wb") as out:
                try:
                    self.repo.git.execute([git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args], output_stream=out,
                                          kill_after_timeout=self.timeout, env=self.auth.environment())
                except git.GitCommandError as exc:
                    raise self._classify(exc, f"git archive of commit {commit[:12]}", "") from None
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            archive.unlink()
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return code_dir

    def _object_type(self, rev: str) -> str | None:
        try:
            return self.repo.git.cat_file("-t", rev).strip()
        except git.GitCommandError:
            return None

    # -- helpers ------------------------------------------------------------------------

    def _git(self, *args: str, timeout: float | None = None) -> str:
        return self.repo.git.execute([git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args], env=self.auth.environment(),
                                     kill_after_timeout=timeout or self.timeout)

    def _classify(self, exc: git.GitCommandError, action: str, what: str) -> Exception:
        stderr = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode("utf-8", "replace")
        stderr = stderr.strip().removeprefix("stderr:").strip().strip("'")
        if stderr.startswith("Timeout:"):
            return StepTimeoutError(action, self.timeout, "raise the deployment timeout if the repository is large")
        summary = _summary(stderr)
        lower = stderr.lower()
        secrets = self.auth.secrets
        if "host key verification failed" in lower:
            return GitAuthError(f"{action} failed: the server's ssh host key is not trusted; add it to "
                                "git.known_hosts or set git.accept_new_host_keys", stderr=stderr, secrets=secrets)
        if any(p in lower for p in _AUTH_PATTERNS):
            hint = ("the token was refused; check git.token (or the server's git_token)"
                    if self.auth.token else
                    "the repository needs credentials or does not exist; check the URL, git.token or git.ssh_key")
            return GitAuthError(f"{action} failed: {hint} ({summary})", stderr=stderr, secrets=secrets)
        if what and any(p in lower for p in _REF_PATTERNS):
            return GitRefNotFoundError(f"{what} not found in {self.auth.url}; check deployment.branch "
                                       f"/ deployment.commit ({summary})", stderr=stderr, secrets=secrets)
        return GitError(f"{action} failed: {summary}", stderr=stderr, secrets=secrets)


def _summary(stderr: str, limit: int = 400) -> str:
    """git's ``fatal:`` / ``error:`` lines on one line (all lines when there are none)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    important = [line for line in lines if line.lower().startswith(("fatal:", "error:", "remote:"))]
    text = "; ".join(important or lines) or "no error output"
    return text if len(text) <= limit else text[: limit - 3] + "..."
