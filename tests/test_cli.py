"""The rundown-agent command line (run as a real subprocess) and the logging setup it installs."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent import logs

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yml"

FIVE_MISTAKES = """\
server:
  url: http://localhost:3000
  api_key: sk-live-0123456789abcdef
worker:
  queues: [emails, "inference:high"]
  concurency: 4
  shutdown_timeout: ten
deployment:
  mode: sometimes
logging:
  level: loud
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOWN_")}
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=60)


def output(result: subprocess.CompletedProcess[str]) -> str:
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    return text


def test_example_config_validates(tmp_path):
    result = run_cli("-validate", "-config", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert result.stdout.startswith(f"config OK: {EXAMPLE}")
    assert "mode: server (http://localhost:3000)" in result.stdout
    assert "transcoding (weight 1, limit 3)" in result.stdout
    assert "change-me" not in output(result)
    assert result.stdout.splitlines()[1] == (
        "  capacity: 10 handlers at once (worker.concurrency); children: auto = 10 for sync handlers "
        "(1 thread each) or 1 if every handler is async (async_limit 10); prefetch 0 per child")
    assert "  shutdown timeout: 8s" in result.stdout.splitlines()


def test_example_local_mode_block_validates_when_uncommented(tmp_path):
    head, local = EXAMPLE.read_text().split("# Local mode:", 1)
    # The block's lines are "# <yaml>"; its first lines are prose.
    block = [line[2:] for line in local.splitlines() if line.startswith("# ")]
    body = "\n".join(block[block.index("redis:"):])
    head = _drop_section(_drop_section(head, "server"), "deployment")
    (tmp_path / "local.yml").write_text(head + body + "\n")
    result = run_cli("-validate", "-config", "local.yml", cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert "mode: local (redis redis://localhost:6379/0; code git https://github.com/acme/tasks.git@main" in result.stdout


def _drop_section(text: str, name: str) -> str:
    lines, skipping = [], False
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            skipping = True
            continue
        if skipping and line and not line.startswith((" ", "#")):
            skipping = False
        if not skipping:
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_five_mistakes_exit_1_with_five_lines(tmp_path):
    (tmp_path / "config.yml").write_text(FIVE_MISTAKES)
    result = run_cli("--validate", "--config=config.yml", cwd=tmp_path)
    text = output(result)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "config.yml: 5 problems"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "worker.queues[1]", "worker.concurency", "worker.shutdown_timeout", "deployment.mode", "logging.level"]
    assert "sk-live-0123456789abcdef" not in text


def test_same_report_when_starting_with_a_bad_config(tmp_path):
    (tmp_path / "config.yml").write_text(FIVE_MISTAKES)
    result = run_cli(cwd=tmp_path)  # ./config.yml is the default
    assert result.returncode == 1
    assert output(result).startswith("config.yml: 5 problems")


def test_version_both_spellings(tmp_path):
    for flag in ("-version", "--version"):
        result = run_cli(flag, cwd=tmp_path)
        assert result.returncode == 0
        assert result.stdout.splitlines()[0] == f"rundown-agent {agent.__version__}"
        assert f"{sys.version_info.major}.{sys.version_info.minor}" in result.stdout


def test_console_script_is_installed(tmp_path):
    script = shutil.which("rundown-agent") or str(Path(sys.executable).parent / "rundown-agent")
    if not Path(script).exists():
        pytest.skip("the package is not installed with its console script")
    result = subprocess.run([script, "-validate", "-config", str(EXAMPLE)], capture_output=True,
                            text=True, env=clean_env(), timeout=60)
    assert result.returncode == 0, output(result)


def test_missing_file_is_one_clear_problem(tmp_path):
    result = run_cli("-validate", "-config", "nope.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert output(result).splitlines() == ["nope.yml: 1 problem", "  nope.yml: file not found"]


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    (tmp_path / "bad.yml").write_text("server:\n  url: http://x\n  api_key: [oops\nworker: {}\n")
    result = run_cli("-validate", "-config", "bad.yml", cwd=tmp_path)
    assert result.returncode == 1
    header, problem = output(result).splitlines()
    assert header == "bad.yml: 1 problem"
    assert "YAML syntax error at line 4, column 7" in problem


def test_environment_only_when_no_config_file(tmp_path):
    env = clean_env(RUNDOWN_SERVER_URL="http://ctl:3000", RUNDOWN_SERVER_API_KEY="env-secret-key",
                    RUNDOWN_WORKER_QUEUES="a:2,b")
    result = run_cli("-validate", cwd=tmp_path, env=env)
    assert result.returncode == 0, output(result)
    assert result.stdout.startswith("config OK: (environment only)")
    assert "a (weight 1, limit 2), b (weight 1)" in result.stdout


def test_validate_prints_the_capacity_of_explicit_processes_and_its_warnings(tmp_path):
    (tmp_path / "config.yml").write_text(
        "server: {url: 'http://localhost:3000', api_key: sk-live-0123456789abcdef}\n"
        "worker: {queues: [a], concurrency: 128, prefetch: 16}\n"
        "deployment: {processes: 2, max_in_flight_per_child: 8}\n")
    result = run_cli("-validate", cwd=tmp_path)
    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["config OK: config.yml", (
        "  capacity: 128 handlers at once (worker.concurrency); children: 2 x 1 thread = 2 sync slots; "
        "async_limit 8 per child; prefetch 16 per child")]
    assert lines[-2:] == [
        "  warning: deployment.max_in_flight_per_child is deprecated: write deployment.async_limit "
        "(async handlers at once per child)",
        "  warning: worker.concurrency 128 is above the 2 sync handler slots of the deployment "
        "(processes 2 x threads 1): at most 2 sync handlers run at once; set deployment.processes: auto, "
        "deployment.processes: 128 or deployment.threads: 64, or lower worker.concurrency"]


def test_validate_capacity_from_environment_overrides(tmp_path):
    env = clean_env(RUNDOWN_SERVER_URL="http://ctl:3000", RUNDOWN_SERVER_API_KEY="env-secret-key",
                    RUNDOWN_WORKER_QUEUES="a", RUNDOWN_WORKER_CONCURRENCY="64", RUNDOWN_WORKER_PREFETCH="32",
                    RUNDOWN_DEPLOYMENT_THREADS="8", RUNDOWN_DEPLOYMENT_ASYNC_LIMIT="16")
    result = run_cli("-validate", cwd=tmp_path, env=env)
    assert result.returncode == 0, output(result)
    assert result.stdout.splitlines()[1] == (
        "  capacity: 64 handlers at once (worker.concurrency); children: auto = 8 for sync handlers "
        "(8 threads each) or 4 if every handler is async (async_limit 16); prefetch 32 per child")


def test_validate_reports_too_many_auto_children(tmp_path):
    (tmp_path / "config.yml").write_text(
        "server: {url: 'http://localhost:3000', api_key: sk-live-0123456789abcdef}\n"
        "worker: {queues: [a], concurrency: 1000}\n")
    result = run_cli("-validate", cwd=tmp_path)
    assert result.returncode == 1
    assert output(result).splitlines() == ["config.yml: 1 problem", (
        "  deployment.processes: auto (the default) would start 1000 children for sync handlers "
        "(worker.concurrency 1000 / deployment.threads 1), above the limit of 256: raise "
        "deployment.threads to 4 or more for sync code, or set deployment.processes: 1 for async-only "
        "code (or lower worker.concurrency)")]


def test_unknown_flag_is_a_usage_error(tmp_path):
    result = run_cli("-validat", cwd=tmp_path)
    assert result.returncode == 2
    assert "--validate" in output(result)


def test_run_exits_2_when_the_runtime_is_missing_or_uses_its_exit_code(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import agent.runtime.app"], capture_output=True)
    # Once the runtime exists: a server that refuses connections, one attempt, no ops port.
    env = clean_env(RUNDOWN_SERVER_URL="http://127.0.0.1:9", RUNDOWN_BOOTSTRAP_RETRIES="1",
                    RUNDOWN_BOOTSTRAP_RETRY_DELAY="0", RUNDOWN_OPS_LISTEN="off")
    result = run_cli("-config", str(EXAMPLE), "-log-format", "json", cwd=tmp_path, env=env)
    if probe.returncode != 0:
        assert result.returncode == 2
        assert "rundown-agent: the agent runtime is not available in this build" in output(result)
    else:  # pragma: no cover - once the runtime exists it decides (it cannot reach the server here)
        assert result.returncode != 0


# --- logging ------------------------------------------------------------------------------------

@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs.clear_secrets()


def test_json_lines_have_the_fields_and_mask_secrets(restore_logging):
    stream = io.StringIO()
    logs.setup_logging("debug", "auto", stream=stream)  # a StringIO is not a TTY: JSON
    logs.register_secret("hunter2-token")
    log = logging.getLogger("agent.runtime")
    log.info("registered with %s", "key hunter2-token", extra={"queue": "emails", "auth": "hunter2-token"})
    try:
        raise RuntimeError("bad token hunter2-token")
    except RuntimeError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "info" and first["logger"] == "agent.runtime"
    assert first["msg"] == "registered with key ***"
    assert (first["queue"], first["auth"]) == ("emails", "***")
    assert first["ts"].endswith("Z")
    assert "RuntimeError: bad token ***" in second["exc"]
    assert "hunter2" not in stream.getvalue()


def test_human_format_and_level_filter(restore_logging):
    stream = io.StringIO()
    logs.setup_logging("warning", "human", stream=stream)
    logging.getLogger("agent.x").info("hidden")
    logging.getLogger("agent.x").warning("shown %d", 3, extra={"task_id": "t1", "note": "two words"})
    (line,) = stream.getvalue().splitlines()
    assert line[23:] == ' WARNING agent.x: shown 3 task_id=t1 note="two words"'
    with pytest.raises(ValueError):
        logs.setup_logging("loud", "human")


def test_redact_masks_given_values_and_url_passwords():
    assert logs.redact("token abcd1234 and abcd", ["abcd1234"]) == "token *** and abcd"
    assert logs.redact("redis://:pw1@host:6379/0 and https://u:p@x.io") == "redis://:***@host:6379/0 and https://u:***@x.io"


def test_log_flags_override_the_config(tmp_path, monkeypatch):
    from agent.cli import CliOptions

    for name in [n for n in os.environ if n.startswith("RUNDOWN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RUNDOWN_LOGGING_LEVEL", "error")
    config = CliOptions(EXAMPLE, log_level="debug", log_format="json").load()
    assert (config.logging.level, config.logging.format) == ("debug", "json")
    assert CliOptions(EXAMPLE).load().logging.level == "error"


def test_validate_refuses_116000_queues_and_control_characters(tmp_path):
    names = ",".join(f"q{i}" for i in range(116_000))
    (tmp_path / "config.yml").write_text(
        f"server: {{url: http://localhost:3000, api_key: k-0123456789}}\nworker: {{queues: [{names}]}}\n")
    assert (tmp_path / "config.yml").stat().st_size < 1_000_000
    result = run_cli("-validate", "-config", "config.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert output(result).splitlines()[0] == "config.yml: 1 problem"
    assert "config OK" not in result.stdout
    (tmp_path / "config.yml").write_text(
        'server: {url: http://localhost:3000, api_key: k-0123456789}\nworker: {queues: ["a\\u0007b"]}\n')
    result = run_cli("-validate", "-config", "config.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert output(result).splitlines()[1] == ("  worker.queues[0]: a queue name is printable characters without "
                                              "whitespace; it contains U+0007 at position 2 (line 2)")
