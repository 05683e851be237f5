"""What a queues file may give as a deployment's ``git_url``: a URL git can fetch, or a path.

* URLs: ``https://`` / ``http://`` / ``ssh://`` / ``git://`` with a host, ``file:///path``, or
  scp-like ``[user@]host:path`` (``git@github.com:acme/app.git``).
* Paths: absolute (``/srv/git/app.git``), ``~/...``, or relative with an explicit ``./`` /
  ``../`` (``.`` and ``..`` too), taken relative to the queues file's directory and handed
  to agents as an absolute path (so an agent on the same machine clones it wherever it runs).

Anything else (a bare ``github.com/acme/app.git``, a typo'd scheme, spaces) is refused with a
message that says what is accepted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ACCEPTED", "resolve_git_url"]

ACCEPTED = ("a git URL (https://host/org/repo.git, ssh://git@host/org/repo.git, git@host:org/repo.git, "
            "file:///path/repo) or a path (/abs/path, ~/path, or ./path and ../path, relative to "
            "the queues file)")
_SCHEMES = ("https", "http", "ssh", "git", "git+ssh", "ssh+git", "file")
_SCP_LIKE = re.compile(r"(?:[A-Za-z0-9._~-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:(?!//)[^\s]+")


def resolve_git_url(value: str, base_dir: Path | None) -> tuple[str | None, str | None]:
    """``(url to send to agents, None)``, or ``(None, problem)`` when ``value`` is neither a
    URL nor a path. ``base_dir`` anchors relative paths (None: the working directory)."""
    if not value or any(c.isspace() or ord(c) < 32 for c in value):
        return None, f"must be {ACCEPTED}; it must not contain spaces or control characters"
    if "://" in value:
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            return None, f"must be {ACCEPTED}; it is not a well-formed URL"
        if parts.scheme.lower() not in _SCHEMES:
            return None, (f"must be {ACCEPTED}; the scheme {parts.scheme!r} is not one of "
                          f"{', '.join(_SCHEMES)}")
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                return None, f"must be {ACCEPTED}; a file URL is file:///absolute/path"
            return value, None
        if not host:
            return None, f"must be {ACCEPTED}; the URL has no host"
        return value, None
    if value in (".", "..") or value.startswith(("./", "../", "/", "~")):
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()).absolute() / path
        return os.path.normpath(path), None
    if _SCP_LIKE.fullmatch(value) and "/" not in value.split(":", 1)[0]:
        return value, None
    return None, f"must be {ACCEPTED}"
