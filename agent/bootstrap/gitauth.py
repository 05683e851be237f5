"""Credentials for git, passed through the environment of each git process only.

* HTTPS token: an ``Authorization: Basic`` header given to git as configuration in the
  environment (``GIT_CONFIG_COUNT`` / ``GIT_CONFIG_KEY_n`` / ``GIT_CONFIG_VALUE_n``, git >= 2.31),
  scoped to the repository's origin (``http.<scheme>://<host>/.extraHeader``), so it is sent to
  that host only. The token is never part of a URL, so it never reaches ``.git/config``,
  a process's arguments, git's messages or our logs.
* SSH key: ``GIT_SSH_COMMAND`` with ``-i <key>``, ``IdentitiesOnly``, ``BatchMode`` and host-key
  checking kept on (``StrictHostKeyChecking=yes``, or ``accept-new`` when the config allows
  it; ``UserKnownHostsFile`` when a known_hosts file is configured).
* Always: ``GIT_TERMINAL_PROMPT=0`` so git fails at once instead of waiting for a password.

Which one applies follows the URL: a token for ``http(s)://`` URLs, the ssh settings for
``ssh://`` and ``user@host:path`` URLs. Credentials written inside a URL
(``https://user:token@host/...``) are taken out of it and used as the token.
"""

from __future__ import annotations

import base64
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from agent.logs import register_secret

__all__ = ["GitAuth", "TOKEN_USERNAME", "is_http_url", "is_ssh_url", "split_credentials"]

TOKEN_USERNAME = "x-access-token"  #: accepted with a token by GitHub, GitLab, Gitea, Bitbucket


def is_http_url(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def is_ssh_url(url: str) -> bool:
    """``ssh://...``, ``git+ssh://...`` or scp-like ``user@host:path``."""
    if "://" in url:
        return urlsplit(url).scheme in ("ssh", "git+ssh", "ssh+git")
    head, sep, _ = url.partition(":")
    return bool(sep) and "/" not in head and not Path(url).exists()


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``https://user:secret@host/x`` -> (``https://host/x``, user, secret); other URLs unchanged."""
    if not is_http_url(url):
        return url, None, None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    secret = unquote(parts.password) if parts.password else None
    return clean, user, secret


@dataclass(frozen=True)
class GitAuth:
    """How to authenticate to one repository URL; :meth:`environment` makes git's env."""

    url: str  #: the URL without credentials (what goes into the remote's config)
    token: str | None = None
    username: str | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_keys: bool = False

    @classmethod
    def for_url(cls, url: str, *, token: str | None = None, ssh_key: Path | None = None,
                known_hosts: Path | None = None, accept_new_host_keys: bool = False) -> GitAuth:
        clean, user, secret = split_credentials(url)
        if secret is None and user is not None and token is None:
            user, secret = None, user  # https://<token>@host/... (runqy's style)
        token = secret or token
        register_secret(token)
        return cls(url=clean, token=token or None, username=user, ssh_key=ssh_key,
                   known_hosts=known_hosts, accept_new_host_keys=accept_new_host_keys)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to mask in every message about this repository."""
        if not self.token:
            return ()
        basic = base64.b64encode(f"{self.username or TOKEN_USERNAME}:{self.token}".encode()).decode()
        return (self.token, basic)

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Variables to add to git's environment (``base``: the environment they extend)."""
        base = os.environ if base is None else base
        env = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "LC_ALL": "C", "LANGUAGE": "C"}
        if self.token and is_http_url(self.url):
            parts = urlsplit(self.url)
            origin = f"{parts.scheme}://{parts.netloc}/"
            count = _config_count(base)
            env[f"GIT_CONFIG_KEY_{count}"] = f"http.{origin}.extraHeader"
            env[f"GIT_CONFIG_VALUE_{count}"] = f"Authorization: Basic {self.secrets[1]}"
            env["GIT_CONFIG_COUNT"] = str(count + 1)
        if is_ssh_url(self.url):
            command = self.ssh_command()
            if command is not None or "GIT_SSH_COMMAND" not in base:
                env["GIT_SSH_COMMAND"] = command or "ssh -o BatchMode=yes"
        return env

    def ssh_command(self) -> str | None:
        """The ``GIT_SSH_COMMAND`` for the configured key / known_hosts, or None without them."""
        if self.ssh_key is None and self.known_hosts is None and not self.accept_new_host_keys:
            return None
        words = ["ssh", "-o", "BatchMode=yes"]
        if self.ssh_key is not None:
            words += ["-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            words += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        words += ["-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_keys else 'yes'}"]
        return shlex.join(words)


def _config_count(base: Mapping[str, str]) -> int:
    try:
        return max(0, int(base.get("GIT_CONFIG_COUNT", "0")))
    except ValueError:
        return 0
