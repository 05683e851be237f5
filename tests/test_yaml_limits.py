"""Every YAML file rundown reads (the agent's config, the control server's queues file) is read
with bounded size, alias expansion and nesting: an alias bomb is refused at once, with a clear
error naming the file, by the real command-line programs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.bounded_yaml import MAX_NODES, YamlFileError, YamlLimits, read_yaml_file
from agent.server.queues import load_queues_file

BIN = Path(sys.executable).parent

# "Billion laughs": 10 levels of 9 aliases each is 9^9 (387 million) strings once expanded.
BOMB = "\n".join(['lol0: &lol0 ["lol"]'] + [
    f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 10)])
AGENT_BOMB = BOMB + "\nserver: {url: https://control.example.com, api_key: abcd1234abcd}\nworker: {queues: *lol9}\n"
SERVER_BOMB = BOMB + "\nqueues: {q: {deployment: {git_url: https://h/r.git, startup_cmd: *lol9}}}\n"

MB = 1024 * 1024


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  #: wall time
    cpu_seconds: float  #: user + system time of the child alone (wait4): what the work cost
    peak_rss: int  #: bytes, of the child process alone


# Runs the measured program as its own child and reports its rusage. The measured program must not
# be a direct child of the test process: Linux carries the hiwater RSS of the address space a
# process leaves at exec into its maxrss, so a child forked from a pytest worker reports the
# worker's ~110 MB whatever it does itself. This launcher is small, so its child starts from ~10 MB.
LAUNCHER = """
import json, os, resource, signal, subprocess, sys
timeout, report, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
proc = subprocess.Popen(argv, preexec_fn=limit_memory)
signal.signal(signal.SIGALRM, lambda *_: proc.kill())
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(proc.pid, 0)
with open(report, "w") as out:
    json.dump({"returncode": os.waitstatus_to_exitcode(status),
               "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024}, out)
"""


def run_measured(argv: list[str], cwd: Path, timeout: float = 20.0) -> Measured:
    """Run ``argv`` and measure its wall time, CPU time and peak RSS. The program gets a 2 GiB
    address space limit and is killed after ``timeout`` s, so a program that still expands the
    bomb fails the test instead of taking the machine down."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOWN_")}
    out, err, report = cwd / "stdout.txt", cwd / "stderr.txt", cwd / "rusage.json"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        start = time.monotonic()
        subprocess.run([sys.executable, "-I", "-c", LAUNCHER, str(timeout), str(report), *argv], cwd=cwd,
                       env=env, stdout=stdout, stderr=stderr, timeout=timeout + 10, check=True)
        seconds = time.monotonic() - start
    usage = json.loads(report.read_text())
    return Measured(usage["returncode"], out.read_text(), err.read_text(), seconds,
                    usage["cpu_seconds"], usage["peak_rss"])


def program(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def test_alias_bomb_config_is_refused_by_validate_in_well_under_a_second_and_100_mb(tmp_path):
    (tmp_path / "bomb.yml").write_text(AGENT_BOMB)
    assert len(AGENT_BOMB) < 1024
    run = run_measured([*program("rundown-agent", "agent.cli"), "-validate", "-config", "bomb.yml"], tmp_path)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[0] == "bomb.yml: 1 problem"
    assert f"bomb.yml: more than {MAX_NODES:,} values once aliases are expanded" in run.stderr
    # The whole program: interpreter start, imports and the refusal (about 0.4 s here); wall time
    # only loosely, as the machine may be busy.
    assert run.cpu_seconds < 1.0, run.cpu_seconds
    assert run.seconds < 10.0, run.seconds
    assert run.peak_rss < 100 * MB, run.peak_rss


def test_alias_bomb_queues_file_is_refused_by_server_check_in_well_under_a_second_and_100_mb(tmp_path):
    (tmp_path / "queues.yml").write_text(SERVER_BOMB)
    run = run_measured([*program("rundown-server", "agent.server.cli"), "--queues", "queues.yml", "--check"],
                       tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[0] == "queues.yml: 1 problem"
    assert "values once aliases are expanded" in run.stderr
    assert run.cpu_seconds < 1.0, run.cpu_seconds
    assert run.seconds < 10.0, run.seconds
    assert run.peak_rss < 100 * MB, run.peak_rss


def test_the_check_itself_takes_milliseconds(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(AGENT_BOMB)
    start = time.process_time()
    with pytest.raises(YamlFileError, match="alias bomb"):
        read_yaml_file(path)
    assert time.process_time() - start < 0.25


def test_a_long_string_aliased_many_times_is_refused(tmp_path):
    # One alias of a long string with a placeholder becomes one copy per use once expanded.
    path = tmp_path / "config.yml"
    long = "x" * 600_000 + "${A:-b}"
    path.write_text(f'worker: {{queues: [&s "{long}"{", *s" * 20}]}}\n')
    with pytest.raises(YamlFileError, match="characters of text once aliases are expanded"):
        read_yaml_file(path)


# --- legitimate anchors still work ---------------------------------------------------------------

def test_config_with_anchors_and_merge_keys_loads(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(textwrap.dedent("""\
        server: {url: https://control.example.com, api_key: abcd1234abcd}
        worker:
          queues:
            - &fast {name: fast, weight: 4, concurrency: 2}
            - {<<: *fast, name: fast.retry}
            - {<<: *fast, name: slow, weight: 1}
        deployment:
          env_vars: &env {MODE: prod, REGION: eu}
        """))
    config = load_config(path, {})
    assert [(q.name, q.weight, q.concurrency) for q in config.worker.queues] == [
        ("fast", 4, 2), ("fast.retry", 4, 2), ("slow", 1, 2)]
    assert config.deployment.env_vars == {"MODE": "prod", "REGION": "eu"}


def test_queues_file_with_a_shared_deployment_anchor_loads(tmp_path):
    path = tmp_path / "queues.yml"
    path.write_text(textwrap.dedent("""\
        api_keys: [{name: w, key: worker-key-0123456789, role: worker}]
        queues:
          a:
            deployment: &dep {git_url: https://git.example/acme/tasks.git, startup_cmd: python worker.py}
          b:
            deployment: {<<: *dep, branch: next}
          c:
            deployment: *dep
        """))
    settings = load_queues_file(path, environ={})
    assert settings.queues["b"].deployment["branch"] == "next"
    assert settings.queues["c"].deployment["git_url"] == "https://git.example/acme/tasks.git"


def test_a_config_duplicate_key_is_still_found_with_merge_keys(tmp_path):
    from agent.config import ConfigError

    path = tmp_path / "config.yml"
    path.write_text("server: {url: https://h, api_key: abcd1234abcd}\n"
                    "worker: {queues: [&q {name: a}, {<<: *q, name: b, name: c}]}\n")
    with pytest.raises(ConfigError, match=r"worker\.queues\[1\]\.name: duplicate key"):
        load_config(path, {})


# --- each bound, in the loader ------------------------------------------------------------------

def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yml"
    path.write_text("# " + "x" * 1_000_000 + "\n")
    with pytest.raises(YamlFileError) as info:
        read_yaml_file(path)
    assert str(info.value) == f"{path}: the file is larger than 1 MB (1,000,000 bytes), the limit for YAML files"
    assert read_yaml_file(path, limits=YamlLimits(max_bytes=2_000_000)) is None


@pytest.mark.parametrize(("text", "fragment"), [
    ("- " * 65 + "x\n", "nested more than 64 levels deep"),
    ("[" * 65 + "]" * 65 + "\n", "nested more than 64 levels deep"),
    ("a: &a [*a]\n", "an alias refers to a list or mapping that contains it"),
    ("a: &a {b: {c: *a}}\n", "an alias refers to a list or mapping that contains it"),
    ("a: 2020-13-45\n", "YAML value error at line 1, column 4: cannot read this value: month must be in 1..12"),
    ("a: " + "1" * 5000 + "\n", "YAML value error at line 1, column 4"),
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
    ("a: [unclosed\n", "YAML syntax error at line 2, column 1"),
])
def test_structure_attacks_are_clear_errors(tmp_path, text, fragment):
    path = tmp_path / "c.yml"
    path.write_text(text)
    with pytest.raises(YamlFileError) as info:
        read_yaml_file(path)
    assert fragment in str(info.value)
    assert str(info.value).startswith(str(path))


def test_nesting_at_the_limit_and_many_plain_values_are_fine(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("- " * 63 + "x\n")
    assert read_yaml_file(path) is not None
    path.write_text("[" + ", ".join(["1"] * (MAX_NODES - 1)) + "]\n")
    assert len(read_yaml_file(path)) == MAX_NODES - 1
    path.write_text("[" + ", ".join(["1"] * MAX_NODES) + "]\n")
    with pytest.raises(YamlFileError, match="values once aliases are expanded"):
        read_yaml_file(path)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(YamlFileError, match="file not found"):
        read_yaml_file(tmp_path / "absent.yml")
    with pytest.raises(YamlFileError, match="is a directory"):
        read_yaml_file(tmp_path)
    (tmp_path / "latin1.yml").write_bytes(b"a: caf\xe9\n")
    with pytest.raises(YamlFileError, match=r"latin1\.yml: is not UTF-8 text \(byte 7 is invalid\)"):
        read_yaml_file(tmp_path / "latin1.yml")
