"""No credential reaches the output of a command line program: ``rundown-agent -validate`` (its
summary and its problem reports), the agent's start-up log lines, ``rundown-agent inspect`` and
``rundown-server --check``, whatever URL or field holds it. Real subprocesses throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import logs

PW = "Zq8vX4pL9mW2kR7"  # no 6 characters of it may appear anywhere in the output
SERVER = "worker: {queues: [a]}\n"


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOWN_")}
    return {**clean, **extra}


def agent(*args: str, cwd: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, env=environ or env(),
                          capture_output=True, text=True, timeout=60)


def assert_hidden(result: subprocess.CompletedProcess[str], secret: str = PW) -> str:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    for i in range(len(secret) - 5):
        assert secret[i:i + 6] not in text, f"{secret[i:i + 6]!r} of the secret is shown:\n{text}"
    return text


def local(redis_url: str, **deployment: str) -> str:
    lines = [f"redis: {{url: '{redis_url}'}}", "worker: {queues: [a]}",
             "deployment: {" + ", ".join(f"{k}: '{v}'" for k, v in
                                         {"path": "code", "startup_cmd": "python w.py", **deployment}.items()) + "}"]
    return "\n".join(lines) + "\n"


def local_git(git_url: str) -> str:
    return ("redis: {url: 'redis://127.0.0.1:6379/0'}\nworker: {queues: [a]}\n"
            f"deployment: {{git_url: '{git_url}', startup_cmd: python w.py}}\n")


VALID = {
    "server.url user:password": (f"server: {{url: 'https://ops:{PW}@control.example.com', api_key: k-0123456789}}\n"
                                 + SERVER, "mode: server (https://ops:***@control.example.com)"),
    "server.url token as user": (f"server: {{url: 'https://{PW}@control.example.com', api_key: k-0123456789}}\n"
                                 + SERVER, "mode: server (https://***@control.example.com)"),
    "redis://:pw@": (local(f"redis://:{PW}@127.0.0.1:6379/0"), "redis redis://:***@127.0.0.1:6379/0;"),
    "rediss://user:pw@": (local(f"rediss://app:{PW}@cache.example.com:6380/1"),
                          "redis rediss://app:***@cache.example.com:6380/1;"),
    "redis+sentinel with a password": (local(f"redis+sentinel://:{PW}@s1:26379,s2:26379/mymaster/0?sentinel_auth=true"),
                                       "redis redis+sentinel://:***@s1:26379,s2:26379/mymaster/0?sentinel_auth=true;"),
    "redis+cluster user:password": (local(f"redis+cluster://app:{PW}@h1:7000,h2:7001"),
                                    "redis redis+cluster://app:***@h1:7000,h2:7001;"),
    "an unencoded @ in the password": (local(f"redis://:{PW[:7]}@{PW[7:]}@127.0.0.1:6379/0"),
                                       "redis redis://:***@127.0.0.1:6379/0;"),
    "a percent-encoded password": (local(f"redis://:{PW[:7]}%40{PW[7:]}@127.0.0.1:6379/0"),
                                   "redis redis://:***@127.0.0.1:6379/0;"),
    "?password= in the query": (local(f"redis://127.0.0.1:6379/0?password={PW}"),
                                "redis redis://127.0.0.1:6379/0?password=***;"),
    "git_url user:token": (local_git(f"https://x-access-token:{PW}@github.com/acme/tasks.git"),
                           "code git https://x-access-token:***@github.com/acme/tasks.git@main"),
    "git_url token as user": (local_git(f"https://{PW}@github.com/acme/tasks.git"),
                              "code git https://***@github.com/acme/tasks.git@main"),
}


@pytest.mark.parametrize("case", VALID)
def test_validate_summary_masks_credentials(tmp_path, case):
    text, shown = VALID[case]
    (tmp_path / "code").mkdir()
    (tmp_path / "config.yml").write_text(text)
    result = agent("-validate", "-config", "config.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert shown in assert_hidden(result)


INVALID = {
    "redis.url with a bad port": local(f"redis://:{PW}@127.0.0.1:99999/0"),
    "redis.url with a bad database": local(f"redis://:{PW}@127.0.0.1:6379/zero"),
    "redis.url with a raw / in the password": local(f"redis://:{PW[:7]}/{PW[7:]}@127.0.0.1:6379/0"),
    "redis+sentinel without a service": local(f"redis+sentinel://:{PW}@s1:26379,s2:26379"),
    "redis+sentinel with a bad port": local(f"redis+sentinel://:{PW}@s1:notaport/mymaster"),
    "server.url with a wrong scheme": f"server: {{url: 'ftp://ops:{PW}@control.example.com', api_key: k-0123456789}}\n"
                                      + SERVER,
    "a long server.url, cut in the message": (
        f"server: {{url: 'https://ops:{PW}@control-plane.internal.example.com:notaport/v1', "
        "api_key: k-0123456789}\n" + SERVER),
    "a password across the cut of a long value": (
        f"server: {{url: 'https://svc-deployment-pipeline-production-eu-west:{PW}@control.example.com:x', "
        "api_key: k-0123456789}\n" + SERVER),
    "server.url with a raw / in the password": (
        f"server: {{url: 'https://ops:{PW[:7]}/{PW[7:]}@control.example.com', api_key: k-0123456789}}\n" + SERVER),
    "git_url token with a wrong scheme": local_git(f"gopher://{PW}@github.com/acme/tasks.git"),
    "other mistakes beside a valid redis password": local(f"redis://:{PW}@127.0.0.1:6379/0", mode="sometimes")
    + "logging: {level: loud}\n",
    "a YAML syntax error on the password's line": f"server:\n  url: https://ops:{PW}@h\n  api_key: [{PW}\n",
    "the api_key given as a list": f"server: {{url: https://h, api_key: [{PW}]}}\n" + SERVER,
}


@pytest.mark.parametrize("case", INVALID)
def test_problem_reports_mask_credentials(tmp_path, case):
    (tmp_path / "code").mkdir()
    (tmp_path / "config.yml").write_text(INVALID[case])
    result = agent("-validate", "-config", "config.yml", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("config.yml: ")
    assert_hidden(result)


def test_a_bad_url_from_the_environment_is_masked(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "config.yml").write_text(local("redis://127.0.0.1:6379/0"))
    result = agent("-validate", "-config", "config.yml", cwd=tmp_path,
                   environ=env(RUNDOWN_REDIS_URL=f"redis://:{PW}@127.0.0.1:6379/x"))
    assert result.returncode == 1
    assert "(from RUNDOWN_REDIS_URL)" in assert_hidden(result)


def test_start_up_log_lines_mask_the_server_credentials(tmp_path):
    # Registration fails (nothing listens on port 1): the agent logs the URL it tried and exits.
    (tmp_path / "config.yml").write_text(textwrap.dedent(f"""\
        server: {{url: "https://{PW}@127.0.0.1:1", api_key: "{PW}-key"}}
        worker: {{queues: [a]}}
        bootstrap: {{retries: 1, retry_delay: 0}}
        ops: {{listen: "off"}}
        """))
    for fmt in ("human", "json"):
        result = agent("-config", "config.yml", "-log-format", fmt, "-log-level", "debug", cwd=tmp_path)
        assert result.returncode != 0
        text = assert_hidden(result)
        assert "https://***@127.0.0.1:1/worker/register" in text


def test_inspect_masks_the_url_in_its_errors(tmp_path):
    for url in (f"redis://:{PW}@127.0.0.1:1/0", f"redis://:{PW[:7]}@{PW[7:]}@127.0.0.1:1/0",
                f"redis://:{PW}@127.0.0.1:notaport/0"):
        result = agent("inspect", "stats", cwd=tmp_path, environ=env(RUNDOWN_REDIS_URL=url))
        assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
        assert_hidden(result)


def test_server_check_masks_git_tokens_and_redis_passwords(tmp_path):
    (tmp_path / "queues.yml").write_text(textwrap.dedent(f"""\
        redis: "redis://:{PW}@127.0.0.1:6379/0"
        api_keys: [{{name: w, key: "{PW}-worker", role: worker}}]
        queues:
          a: {{deployment: {{git_url: "https://{PW}@github.com/acme/a.git", startup_cmd: python w.py}}}}
          b: {{deployment: {{git_url: "https://bot:{PW}@github.com/acme/b.git", startup_cmd: python w.py}}}}
        """))
    server = Path(sys.executable).parent / "rundown-server"
    command = [str(server)] if server.exists() else [sys.executable, "-m", "agent.server.cli"]
    result = subprocess.run([*command, "--queues", "queues.yml", "--check"], cwd=tmp_path, env=env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = assert_hidden(result)
    assert "a: a=1 <- https://***@github.com/acme/a.git" in text
    assert "b: b=1 <- https://bot:***@github.com/acme/b.git" in text
    (tmp_path / "queues.yml").write_text(f'redis: "http://:{PW}@127.0.0.1:6379/0"\nqueues: [{PW}]\n')
    result = subprocess.run([*command, "--queues", "queues.yml", "--check"], cwd=tmp_path, env=env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert_hidden(result)


@pytest.mark.parametrize(("text", "masked"), [
    ("redis://:pw1@host:6379/0 and https://u:p@x.io", "redis://:***@host:6379/0 and https://u:***@x.io"),
    ("redis://:pa@ss@host:6379/0", "redis://:***@host:6379/0"),
    ("https://ghp_0123456789@github.com/a/b.git", "https://***@github.com/a/b.git"),
    ("redis://h:1/0?db=1&password=abc&sentinel_password=def", "redis://h:1/0?db=1&password=***&sentinel_password=***"),
    ("https://api.example.com/v1?api_key=k123&x=1", "https://api.example.com/v1?api_key=***&x=1"),
    ("ssh://git@github.com/acme/a.git", "ssh://git@github.com/acme/a.git"),
    ("git@github.com:acme/a.git", "git@github.com:acme/a.git"),
    ("https://registry.example.com/@scope/pkg", "https://registry.example.com/@scope/pkg"),
    ("redis+sentinel://s1:26379/mymaster?sentinel_auth=true", "redis+sentinel://s1:26379/mymaster?sentinel_auth=true"),
])
def test_the_shared_url_masking(text, masked):
    assert logs.redact_url(text) == masked
    assert logs.redact(text, []) == masked


def test_url_secrets_lists_what_is_masked_in_both_spellings():
    assert logs.url_secrets("redis://:p%40ss@h/0 https://tok@github.com/x ssh://git@h/x redis://h?token=t1") == [
        "p%40ss", "tok", "t1", "p@ss"]


def test_registering_many_secrets_is_linear(tmp_path):
    # A queues file may hold a thousand vault values: each registration used to recompile the
    # pattern of all of them (300 of 1 KB took about 30 s of CPU).
    import time

    try:
        start = time.process_time()
        for i in range(300):
            logs.register_secret(f"{i:04d}-" + "s" * 1000)
        assert logs.redact("a 0042-" + "s" * 1000 + " b") == "a *** b"
        assert time.process_time() - start < 3.0
    finally:
        logs.clear_secrets()
