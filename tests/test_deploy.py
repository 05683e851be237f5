"""Deployment from real git repositories made in tmp dirs, with a real virtualenv and a real
requirement installed offline from a wheel built here; token auth against a real smart-HTTP
git server (``git http-backend``); registration with rundown-server followed by a deploy."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.bootstrap.deploy import current_deployment, deploy
from agent.bootstrap.errors import (
    CodePathError,
    DeploymentError,
    GitAuthError,
    GitError,
    GitRefNotFoundError,
    InstallError,
    StepTimeoutError,
)
from agent.bootstrap.gitauth import GitAuth
from agent.bootstrap.models import DeploymentSpec
from agent.bootstrap.register import register
from agent.config.model import (
    BootstrapConfig,
    Config,
    GitConfig,
    QueueSpec,
    Secret,
    ServerConfig,
    WorkerConfig,
)
from agent.server import ServerThread, create_app, parse_queues

REAL_GIT = shutil.which("git")
TOKEN = "tok-4f9a1c2b7e3d5a6f"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}
REQUIREMENTS_V1 = "--no-index\n--find-links wheels\ntinydep==1.0\n"
TIMINGS: dict[str, dict[str, float]] = {}


# -- helpers -------------------------------------------------------------------------------

def git(cwd: Path, *args: str) -> str:
    done = subprocess.run([REAL_GIT, *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def wheel(folder: Path, name: str, version: str, value: int) -> None:
    """A minimal pure-Python wheel, written by hand (no build tools, no network)."""
    files = {f"{name}/__init__.py": f"VALUE = {value}\n".encode(),
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, data in files.items():
            z.writestr(path, data)


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    wheel(path / "wheels", "tinydep", "1.0", 1)
    commit(path, {"worker.py": "print('v1')\n", "requirements.txt": REQUIREMENTS_V1,
                  "sub/app.py": "APP = 1\n"}, "first")
    return path


def spec_for(url: str | Path, **kw) -> DeploymentSpec:
    kw.setdefault("branch", "main")
    return DeploymentSpec(queue="jobs", git_url=str(url), startup_cmd="python worker.py", **kw)


def where(dep) -> tuple:
    """What identifies a deployment on disk (``installed``/``timings`` describe one call)."""
    return None if dep is None else (dep.code_dir, dep.venv_dir, dep.python, dep.commit)


def import_value(python: Path, module: str = "tinydep") -> str:
    return subprocess.run([str(python), "-c", f"import {module}; print({module}.VALUE)"],
                          capture_output=True, text=True, check=True).stdout.strip()


# -- git + virtualenv + install ------------------------------------------------------------

def test_cold_then_warm_deploy_skips_install(repo, tmp_path, record_property):
    root = tmp_path / "deployments"
    spec = spec_for(repo)
    cold = deploy(spec, root)
    assert cold.installed and cold.commit == git(repo, "rev-parse", "HEAD")
    assert (cold.code_dir / "worker.py").read_text() == "print('v1')\n"
    assert not (cold.code_dir / ".git").exists()
    assert cold.venv_dir is not None and cold.python == cold.venv_dir / "bin" / "python"
    assert import_value(cold.python) == "1"
    assert {"fetch", "checkout", "venv", "install", "total"} <= set(cold.timings)

    started = time.monotonic()
    warm = deploy(spec, root)
    elapsed = time.monotonic() - started
    assert not warm.installed
    assert (warm.code_dir, warm.venv_dir, warm.commit) == (cold.code_dir, cold.venv_dir, cold.commit)
    assert "install" not in warm.timings and elapsed < 2.0
    TIMINGS["cold"], TIMINGS["warm"] = cold.timings, warm.timings
    record_property("cold_deploy_s", round(cold.timings["total"], 3))
    record_property("warm_deploy_s", round(warm.timings["total"], 3))
    print(f"\ncold deploy {cold.timings['total']:.3f} s "
          f"({', '.join(f'{k} {v:.3f}' for k, v in cold.timings.items())}); "
          f"warm deploy {warm.timings['total']:.3f} s ({', '.join(f'{k} {v:.3f}' for k, v in warm.timings.items())})")


def test_new_commit_redeploys_code_and_reuses_the_virtualenv(repo, tmp_path):
    root = tmp_path / "deployments"
    first = deploy(spec_for(repo), root)
    second_sha = commit(repo, {"worker.py": "print('v2')\n"}, "second")
    second = deploy(spec_for(repo), root)
    assert second.commit == second_sha and second.code_dir != first.code_dir
    assert (second.code_dir / "worker.py").read_text() == "print('v2')\n"
    assert not second.installed and second.venv_dir == first.venv_dir
    assert first.code_dir.is_dir()  # the previous deployment is kept
    commit(repo, {"worker.py": "print('v3')\n"}, "third")
    third = deploy(spec_for(repo), root)
    assert not first.code_dir.exists() and second.code_dir.is_dir() and third.code_dir.is_dir()
    assert current_deployment(root, "jobs").commit == third.commit


def test_changed_requirements_reinstall_in_a_new_virtualenv(repo, tmp_path):
    root = tmp_path / "deployments"
    first = deploy(spec_for(repo), root)
    wheel(repo / "wheels", "tinydep", "2.0", 2)
    commit(repo, {"requirements.txt": REQUIREMENTS_V1.replace("1.0", "2.0")}, "bump")
    second = deploy(spec_for(repo), root)
    assert second.installed and second.venv_dir != first.venv_dir
    assert import_value(second.python) == "2" and import_value(first.python) == "1"


def test_branch_change_commit_pins_and_url_change(repo, tmp_path):
    root = tmp_path / "deployments"
    first_sha = git(repo, "rev-parse", "HEAD")
    second_sha = commit(repo, {"worker.py": "print('main v2')\n"}, "second")
    git(repo, "checkout", "-q", "-b", "feature", first_sha)
    feature_sha = commit(repo, {"worker.py": "print('feature')\n"}, "feature work")
    git(repo, "checkout", "-q", "main")

    main = deploy(spec_for(repo, venv="none"), root)
    assert main.commit == second_sha
    feature = deploy(spec_for(repo, branch="feature", venv="none"), root)
    assert feature.commit == feature_sha and (feature.code_dir / "worker.py").read_text() == "print('feature')\n"
    pinned = deploy(spec_for(repo, commit=first_sha, venv="none"), root)
    assert pinned.commit == first_sha and (pinned.code_dir / "worker.py").read_text() == "print('v1')\n"
    short = deploy(spec_for(repo, commit=second_sha[:8], venv="none"), tmp_path / "other-root")
    assert short.commit == second_sha

    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(repo), str(fork))
    fork_sha = commit(fork, {"worker.py": "print('fork')\n"}, "fork work")
    moved = deploy(spec_for(fork, venv="none"), root)
    assert moved.commit == fork_sha and (moved.code_dir / "worker.py").read_text() == "print('fork')\n"
    assert str(fork) in (root / "jobs" / "repo.git" / "config").read_text()


def test_code_path(repo, tmp_path):
    dep = deploy(spec_for(repo, code_path="sub", venv="none"), tmp_path / "d")
    assert dep.code_dir.name == "sub" and (dep.code_dir / "app.py").is_file()
    assert not (dep.code_dir.parent / "worker.py").exists()  # only code_path was exported
    with pytest.raises(CodePathError, match="'nope' does not exist"):
        deploy(spec_for(repo, code_path="nope", venv="none"), tmp_path / "d")
    with pytest.raises(CodePathError, match="is a file"):
        deploy(spec_for(repo, code_path="worker.py", venv="none"), tmp_path / "d")


def test_bad_branch_and_broken_url_keep_the_previous_deployment(repo, tmp_path):
    root = tmp_path / "deployments"
    good = deploy(spec_for(repo), root)
    with pytest.raises(GitRefNotFoundError) as info:
        deploy(spec_for(repo, branch="no-such-branch"), root)
    message = str(info.value)
    assert "'no-such-branch' not found" in message and "\n" not in message
    assert where(info.value.previous) == where(good)
    assert where(current_deployment(root, "jobs")) == where(good) and import_value(good.python) == "1"

    with pytest.raises(GitError) as info:
        deploy(spec_for(tmp_path / "missing-repo"), root)
    assert "missing-repo" in str(info.value) and "\n" not in str(info.value)
    assert not isinstance(info.value, GitRefNotFoundError)
    assert where(info.value.previous) == where(good) and good.code_dir.is_dir()


def test_install_failure_keeps_the_previous_deployment(repo, tmp_path):
    root = tmp_path / "deployments"
    good = deploy(spec_for(repo), root)
    commit(repo, {"requirements.txt": "--no-index\nno-such-package-xyz==1.0\n"}, "broken deps")
    with pytest.raises(InstallError) as info:
        deploy(spec_for(repo), root)
    assert "dependency install failed" in str(info.value) and "no-such-package-xyz" in info.value.output_tail
    assert where(info.value.previous) == where(good) == where(current_deployment(root, "jobs"))
    assert import_value(good.python) == "1"
    fixed_sha = commit(repo, {"requirements.txt": REQUIREMENTS_V1}, "fix deps")
    fixed = deploy(spec_for(repo), root)
    assert fixed.commit == fixed_sha and not fixed.installed and fixed.venv_dir == good.venv_dir


def test_local_directory_goes_through_the_same_function(tmp_path):
    code = tmp_path / "code"
    wheel(code / "wheels", "tinydep", "1.0", 7)
    (code / "requirements.txt").write_text(REQUIREMENTS_V1)
    (code / "worker.py").write_text("print('local')\n")
    spec = DeploymentSpec(queue="local", path=code, startup_cmd="python worker.py")
    cold = deploy(spec, tmp_path / "d")
    assert cold.code_dir == code.resolve() and cold.commit == "" and cold.installed
    assert import_value(cold.python) == "7"
    warm = deploy(spec, tmp_path / "d")
    assert not warm.installed and warm.python == cold.python

    none = deploy(DeploymentSpec(queue="local", path=code, startup_cmd="x", venv="none"), tmp_path / "d")
    assert none.venv_dir is None and none.python == Path(sys.executable) and not none.installed
    with pytest.raises(CodePathError):
        deploy(DeploymentSpec(queue="local", path=tmp_path / "absent", startup_cmd="x"), tmp_path / "d")


def test_spec_from_local_config(tmp_path):
    from agent.config.model import DeploymentConfig

    cfg = DeploymentConfig(path=tmp_path, startup_cmd="python w.py", env_vars={"A": "1"}, mode="one_shot")
    spec = DeploymentSpec.from_config(cfg, "q")
    assert spec.path == tmp_path and spec.git_url is None and spec.mode == "one_shot"
    with pytest.raises(ValueError, match="exactly one"):
        DeploymentSpec(startup_cmd="x")


# -- token auth over smart HTTP ------------------------------------------------------------

class GitHTTPServer:
    """``git http-backend`` behind a Basic-auth check, on a free loopback port."""

    def __init__(self, root: Path, token: str | None = TOKEN, delay: float = 0.0) -> None:
        self.root, self.token, self.delay = root, token, delay
        self.authorizations: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer.handle(self)

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        time.sleep(self.delay)
        given = req.headers.get("Authorization", "")
        self.authorizations.append(given)
        expected = "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        if self.token is not None and given != expected:
            req.send_response(401)
            req.send_header("WWW-Authenticate", 'Basic realm="git"')
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        path, _, query = req.path.partition("?")
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        env = {"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
               "QUERY_STRING": query, "REQUEST_METHOD": req.command, "REMOTE_ADDR": "127.0.0.1",
               "CONTENT_TYPE": req.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "HTTP_CONTENT_ENCODING": req.headers.get("Content-Encoding", ""),
               "GIT_PROTOCOL": req.headers.get("Git-Protocol", ""), "PATH": os.environ["PATH"]}
        out = subprocess.run([REAL_GIT, "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.split(b"\r\n"):
            name, _, value = line.decode().partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        req.send_response(status)
        for name, value in headers:
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client killed by a timeout
            req.wfile.write(payload)

    def __enter__(self) -> GitHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(repo, tmp_path):
    """The repository as a bare repo under a served root: URL <server>/app.git."""
    root = tmp_path / "served"
    root.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(root / "app.git"))
    return root


@pytest.fixture
def argv_log(tmp_path, monkeypatch):
    """A ``git`` wrapper first on PATH that records every git command line."""
    log = tmp_path / "git-argv.log"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{REAL_GIT}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def test_token_is_used_but_never_stored_shown_or_passed_as_argument(served, tmp_path, argv_log):
    root = tmp_path / "deployments"
    with GitHTTPServer(served) as srv:
        dep = deploy(spec_for(f"{srv.url}/app.git", venv="none"), root, GitConfig(token=Secret(TOKEN)))
        assert (dep.code_dir / "worker.py").is_file()
        assert any(a.startswith("Basic ") for a in srv.authorizations)
        for wrong, expect in ((Secret("tok-wrong-0000000000"), "token was refused"), (None, "needs credentials")):
            with pytest.raises(GitAuthError) as info:
                deploy(spec_for(f"{srv.url}/app.git", venv="none"), tmp_path / "other", GitConfig(token=wrong))
            text = str(info.value) + info.value.stderr
            assert expect in text and "\n" not in str(info.value)
            assert "tok-wrong-0000000000" not in text and TOKEN not in text
            assert info.value.previous is None
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    logged = argv_log.read_text()
    assert "fetch" in logged and TOKEN not in logged and basic not in logged
    for path in [root / "jobs" / "repo.git" / "config", root / "jobs" / "current.json",
                 *(p for p in (root / "jobs" / "repo.git").rglob("*") if p.is_file() and p.stat().st_size < 1e6)]:
        content = path.read_bytes()
        assert TOKEN.encode() not in content and basic.encode() not in content, path


def test_servers_token_wins_and_url_credentials_are_stripped(served, tmp_path):
    with GitHTTPServer(served) as srv:
        spec = spec_for(f"{srv.url}/app.git", venv="none", git_token=Secret(TOKEN))
        deploy(spec, tmp_path / "a", GitConfig(token=Secret("tok-local-wrong-00000")))
        host = srv.url.removeprefix("http://")
        deploy(spec_for(f"http://{TOKEN}@{host}/app.git", venv="none"), tmp_path / "b")
        assert TOKEN not in (tmp_path / "b" / "jobs" / "repo.git" / "config").read_text()
        assert TOKEN not in json.dumps(json.loads((tmp_path / "b" / "jobs" / "current.json").read_text()))


def test_fetch_timeout_and_reuse_of_the_last_deployment(served, tmp_path):
    root = tmp_path / "deployments"
    with GitHTTPServer(served, token=None) as srv:
        spec = spec_for(f"{srv.url}/app.git", venv="none")
        good = deploy(spec, root)
        srv.delay = 3.0
        started = time.monotonic()
        with pytest.raises(StepTimeoutError, match="within 0.5 s"):
            deploy(spec, root, fetch_timeout=0.5)
        assert time.monotonic() - started < 3.0
        reused = deploy(spec, root, fetch_timeout=0.5, reuse_on_fetch_error=True)
        assert where(reused) == where(good)
        srv.delay = 0.0
    with pytest.raises(GitError) as info:  # server gone
        deploy(spec, root)
    assert where(info.value.previous) == where(good)
    assert where(deploy(spec, root, reuse_on_fetch_error=True)) == where(good)


def test_ssh_command_keeps_host_key_checking(tmp_path):
    env = GitAuth.for_url("git@github.com:acme/repo.git", ssh_key=tmp_path / "my key").environment({})
    assert env["GIT_SSH_COMMAND"] == (f"ssh -o BatchMode=yes -i '{tmp_path}/my key' -o IdentitiesOnly=yes "
                                      "-o StrictHostKeyChecking=yes")
    env = GitAuth.for_url("ssh://git@h/r.git", known_hosts=Path("/k"), accept_new_host_keys=True).environment({})
    assert "UserKnownHostsFile=/k" in env["GIT_SSH_COMMAND"] and "accept-new" in env["GIT_SSH_COMMAND"]
    https = GitAuth.for_url("https://h/r.git", token="t0ken-value").environment({"GIT_CONFIG_COUNT": "2"})
    assert https["GIT_CONFIG_COUNT"] == "3" and https["GIT_CONFIG_KEY_2"] == "http.https://h/.extraHeader"
    assert "GIT_SSH_COMMAND" not in https and https["GIT_TERMINAL_PROMPT"] == "0"


# -- registration with rundown-server, then deploy -----------------------------------------

async def test_register_then_deploy(repo, tmp_path, redis_url):
    doc = {"api_keys": [{"name": "w", "key": "worker-key-0123456789", "role": "worker"}],
           "queues": {"jobs": {"deployment": {"git_url": str(repo), "branch": "main",
                                              "startup_cmd": "python worker.py", "env_vars": {"A": "1"}}}}}
    with ServerThread(create_app(parse_queues(doc, redis_url=redis_url))) as srv:
        config = Config(server=ServerConfig(url=srv.url, api_key=Secret("worker-key-0123456789")),
                        worker=WorkerConfig(queues=(QueueSpec("jobs"),)),
                        bootstrap=BootstrapConfig(retries=1, retry_delay=0.01))
        reg = await register(config)
    dep = deploy(reg.deployments["jobs"], tmp_path / "d", config.git)
    assert reg.queues == {"jobs": 1} and dep.installed and (dep.code_dir / "worker.py").is_file()
    assert dep.commit == git(repo, "rev-parse", "HEAD")


def test_errors_are_deployment_errors():
    for cls in (CodePathError, GitError, GitAuthError, GitRefNotFoundError, InstallError, StepTimeoutError):
        assert issubclass(cls, DeploymentError)
