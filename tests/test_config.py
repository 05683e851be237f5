"""agent.config: loading, placeholders, RUNDOWN_* overrides, validation problems, secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import redis

from agent import logs
from agent.config import (
    Config,
    ConfigError,
    QueueSpec,
    Secret,
    format_duration,
    load_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-live-0123456789abcdef"
SERVER = f"""
server:
  url: https://control.example.com/
  api_key: {API_KEY}
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ or {})


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    found: dict[str, str] = {}
    for p in info.value.problems:
        found.setdefault(p.path, p.message)
    return found


@pytest.fixture(autouse=True)
def _forget_secrets():
    yield
    logs.clear_secrets()


# --- defaults and parsing -------------------------------------------------------------------

def test_minimal_server_config_gets_every_default(tmp_path):
    config = load(tmp_path, SERVER + "worker:\n  queues: [emails]\n")
    assert config.server.url == "https://control.example.com"
    assert config.server.api_key == Secret(API_KEY)
    assert config.worker.queues == (QueueSpec("emails", 1, None),)
    assert (config.worker.concurrency, config.worker.prefetch, config.worker.strict_priority) == (10, 0, False)
    assert config.worker.shutdown_timeout == 8.0
    assert (config.worker.max_tasks_per_child, config.worker.max_memory_per_child) == (0, None)
    assert (config.bootstrap.retries, config.bootstrap.retry_delay) == (3, 5.0)
    dep = config.deployment
    assert dep.dir == tmp_path / "deployment"
    assert (dep.git_url, dep.branch, dep.commit, dep.code_path, dep.path) == (None, "main", None, "", None)
    assert (dep.startup_cmd, dep.env_vars, dep.startup_timeout) == (None, {}, 60.0)
    assert (dep.mode, dep.processes, dep.threads, dep.async_limit) == ("long_running", None, 1, 10)
    assert (dep.venv, dep.requirements) == ("auto", None)
    assert config.git.ssh_key is None and config.git.token is None and config.git.known_hosts is None
    assert config.git.accept_new_host_keys is False
    assert config.retry.max_retry == 25
    assert (config.ops.listen, config.ops.host, config.ops.port) == ("127.0.0.1:9465", "127.0.0.1", 9465)
    assert (config.ops.token, config.ops.enable_controls) == (None, False)
    assert (config.logging.level, config.logging.format) == ("info", "auto")
    assert config.redis is None and config.local_mode is False
    assert config.source == tmp_path / "config.yml"
    assert config.warnings == ()


def test_every_field_is_parsed(tmp_path):
    (tmp_path / "id_ed25519").write_text("key")
    (tmp_path / "known_hosts").write_text("hosts")
    config = load(tmp_path, SERVER + """
worker:
  queues:
    - inference.high
    - {name: inference.low, weight: 3, concurrency: 2}
    - transcoding:4
  concurrency: "20"
  prefetch: 32
  strict_priority: true
  shutdown_timeout: 1m30s
  max_tasks_per_child: 100
  max_memory_per_child: 512MB
bootstrap: {retries: 5, retry_delay: 250ms}
deployment:
  dir: work/deploy
  git_url: https://github.com/acme/tasks.git
  branch: release
  commit: 3f2c1e9
  code_path: ./services/worker/
  startup_cmd: python -u "my worker.py"
  env_vars: {MODEL: small, PORT: 8080}
  startup_timeout: 2m
  mode: one_shot
  processes: 3
  threads: 8
  async_limit: 4
  venv: none
  requirements: reqs/prod.txt
git:
  ssh_key: id_ed25519
  token: ghp_abcdefgh
  known_hosts: known_hosts
  accept_new_host_keys: yes
retry: {max_retry: 0}
ops: {listen: "[::1]:0", token: ops-token-1, enable_controls: true}
logging: {level: WARN, format: json}
""")
    w = config.worker
    assert w.queues == (QueueSpec("inference.high"), QueueSpec("inference.low", 3, 2), QueueSpec("transcoding", 1, 4))
    assert w.queues[1].parent == "inference"
    assert (w.concurrency, w.prefetch, w.strict_priority, w.shutdown_timeout) == (20, 32, True, 90.0)
    assert (w.max_tasks_per_child, w.max_memory_per_child) == (100, 512_000_000)
    assert (config.bootstrap.retries, config.bootstrap.retry_delay) == (5, 0.25)
    d = config.deployment
    assert d.dir == tmp_path / "work" / "deploy"
    assert (d.git_url, d.branch, d.commit, d.code_path) == ("https://github.com/acme/tasks.git", "release", "3f2c1e9", "services/worker")
    assert d.startup_argv == ("python", "-u", "my worker.py")
    assert d.env_vars == {"MODEL": "small", "PORT": "8080"}
    assert (d.startup_timeout, d.mode, d.processes, d.threads, d.async_limit) == (120.0, "one_shot", 3, 8, 4)
    assert (d.venv, d.requirements) == ("none", "reqs/prod.txt")
    assert config.git.ssh_key == tmp_path / "id_ed25519"
    assert config.git.known_hosts == tmp_path / "known_hosts"
    assert config.git.token.reveal() == "ghp_abcdefgh" and config.git.accept_new_host_keys is True
    assert config.retry.max_retry == 0
    assert (config.ops.host, config.ops.port, config.ops.enable_controls) == ("::1", 0, True)
    assert config.ops.token.reveal() == "ops-token-1"
    assert (config.logging.level, config.logging.format) == ("warning", "json")
    # A local deployment spec without a redis section is server mode: it is reported, not used.
    assert not config.local_mode
    assert any("only in local mode" in w for w in config.warnings)


@pytest.mark.parametrize(("text", "seconds"), [
    ("300ms", 0.3), ("1.5h", 5400.0), ("2h45m", 9900.0), ("0", 0.0), ("30", 30.0), (45, 45.0),
    (2.5, 2.5), ("1m30s", 90.0), ("100us", 1e-4), ("-5s", -5.0),
])
def test_durations_are_go_style_or_seconds(text, seconds):
    assert parse_duration(text, minimum=None) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["ten", "5 s", "1d", "", "s", "1h-5m", True])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("512MB", 512_000_000), ("1GiB", 2**30), ("1.5KiB", 1536), (4096, 4096), ("100", 100),
    ("2 mb", 2_000_000), ("1Ti", 2**40),
])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_format_duration_round_trips():
    for seconds in (0, 0.25, 8, 90, 3600, 9900, 5400.5):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# --- ${VAR} placeholders ----------------------------------------------------------------------

def test_placeholders_expand_after_parsing(tmp_path):
    env = {"KEY": 'has "quotes"\nand: a newline', "CONC": "7", "EMPTY": ""}
    config = load(tmp_path, """
server:
  url: ${URL:-http://localhost:3000}
  api_key: ${KEY}
worker:
  queues: ["${Q:-emails}"]
  concurrency: ${CONC}
deployment:
  env_vars:
    LITERAL: $${NOT_EXPANDED}
    FALLBACK: ${EMPTY:-used-when-empty}
    SET_EMPTY: x${EMPTY}y
""", env)
    assert config.server.url == "http://localhost:3000"
    assert config.server.api_key.reveal() == env["KEY"]
    assert config.worker.queues == (QueueSpec("emails"),) and config.worker.concurrency == 7
    assert config.deployment.env_vars == {
        "LITERAL": "${NOT_EXPANDED}", "FALLBACK": "used-when-empty", "SET_EMPTY": "xy"}


def test_unset_placeholder_is_an_error_naming_variable_and_field(tmp_path):
    found = problems(tmp_path, SERVER.replace(API_KEY, "${MISSING_KEY}") + "worker: {queues: [a]}\n")
    assert list(found) == ["server.api_key"]
    assert "MISSING_KEY is not set" in found["server.api_key"]


def test_malformed_placeholder_is_an_error(tmp_path):
    found = problems(tmp_path, SERVER + "worker: {queues: ['${1BAD}', '${OPEN']}\n")
    assert set(found) == {"worker.queues[0]", "worker.queues[1]"}
    assert "malformed placeholder" in found["worker.queues[0]"]


# --- RUNDOWN_* overrides ----------------------------------------------------------------------

def test_environment_overrides_win_over_the_file(tmp_path):
    config = load(tmp_path, SERVER + "worker: {queue: old, concurrency: 2}\nlogging: {level: info}\n", {
        "RUNDOWN_WORKER_CONCURRENCY": "12",
        "RUNDOWN_WORKER_QUEUES": "a, b:3 ,,c.high",
        "RUNDOWN_SERVER_API_KEY": "from-env-key",
        "RUNDOWN_LOGGING_LEVEL": "",  # empty = unset: the file's value stays
        "RUNDOWN_OPS_LISTEN": "off",
        "RUNDOWN_DEPLOYMENT_DIR": "rel/dir",
    })
    assert config.worker.concurrency == 12
    assert config.worker.queues == (QueueSpec("a"), QueueSpec("b", 1, 3), QueueSpec("c.high"))
    assert config.server.api_key.reveal() == "from-env-key"
    assert config.logging.level == "info"
    assert config.ops.listen is None and config.ops.port is None
    assert config.deployment.dir == Path.cwd() / "rel" / "dir"  # env paths: relative to the CWD
    assert config.warnings == ()  # the file's deprecated `queue` was replaced, so no warning


def test_environment_only_configuration(tmp_path):
    config = load_config(None, {
        "RUNDOWN_SERVER_URL": "http://ctl:3000", "RUNDOWN_SERVER_API_KEY": "env-only-key",
        "RUNDOWN_WORKER_QUEUES": "emails", "RUNDOWN_REDIS_SERVER": "/usr/bin/redis-server",
    })
    assert config.source is None and config.server.url == "http://ctl:3000"
    assert config.worker.queues == (QueueSpec("emails"),)


def test_environment_only_without_anything_reports_what_is_required():
    with pytest.raises(ConfigError) as info:
        load_config(None, {})
    assert [p.path for p in info.value.problems] == ["worker.queues", "server.url", "server.api_key"]
    assert info.value.report().startswith("configuration: 3 problems")


def test_bad_override_names_its_variable_and_is_not_expanded(tmp_path):
    found = problems(tmp_path, SERVER + "worker: {queues: [a]}\n",
                     {"RUNDOWN_WORKER_CONCURRENCY": "0", "RUNDOWN_WORKER_QUEUES": "${X}"})
    assert found["worker.concurrency"] == "expected an integer from 1 to 100,000, got \"0\" (from RUNDOWN_WORKER_CONCURRENCY)"
    assert "worker.queues[0]" in found and "not set" not in found["worker.queues[0]"]


def test_mistyped_override_gets_a_warning(tmp_path):
    config = load(tmp_path, SERVER + "worker: {queues: [a]}\n", {"RUNDOWN_WORKER_CONCURENCY": "3"})
    assert config.worker.concurrency == 10
    assert config.warnings == ("environment variable RUNDOWN_WORKER_CONCURENCY is not a config "
                               "override; did you mean RUNDOWN_WORKER_CONCURRENCY?",)


# --- queue specs ------------------------------------------------------------------------------

def test_colon_with_a_word_suggests_a_sub_queue(tmp_path):
    found = problems(tmp_path, SERVER + "worker: {queues: [emails, 'inference:high']}\n")
    assert found == {"worker.queues[1]": (
        '"inference:high" is not a queue spec: write "inference.high" for a sub-queue, '
        'or "inference:N" (N a positive integer) to limit the queue\'s concurrency')}


@pytest.mark.parametrize(("queues", "path", "fragment"), [
    ("[a, a:2]", "worker.queues[1]", 'duplicate queue "a"'),
    ("['a:0']", "worker.queues[0]", "must be an integer from 1 to 100,000"),
    ("['']", "worker.queues[0]", "a queue name must not be empty"),
    ("['has space']", "worker.queues[0]", "a queue name"),
    ("['a..b']", "worker.queues[0]", "a queue name"),
    ("[{name: a, wieght: 2}]", "worker.queues[0].wieght", 'did you mean "weight"'),
    ("[{weight: 2}]", "worker.queues[0].name", "required"),
    ("[{name: a, weight: 0}]", "worker.queues[0].weight", "expected an integer from 1 to 1,000,000, got 0"),
    ("[{name: 'a:3'}]", "worker.queues[0].name", "concurrency key"),
    ("[[a]]", "worker.queues[0]", "got a list"),
    ("{a: 1}", "worker.queues", "expected a list of queues, got a mapping"),
    ("[]", "worker.queues", "at least one queue"),
])
def test_malformed_queue_specs(tmp_path, queues, path, fragment):
    found = problems(tmp_path, SERVER + f"worker:\n  queues: {queues}\n")
    assert path in found, found
    assert fragment in found[path]


def test_deprecated_queue_alias(tmp_path):
    config = load(tmp_path, SERVER + "worker: {queue: 'emails:2'}\n")
    assert config.worker.queues == (QueueSpec("emails", 1, 2),)
    assert any("deprecated" in w for w in config.warnings)
    assert "worker.queue" in problems(tmp_path, SERVER + "worker: {queue: a, queues: [b]}\n")


# --- each kind of problem, with its exact path ------------------------------------------------

@pytest.mark.parametrize(("snippet", "path", "message"), [
    ("worker: {queues: [a], concurency: 3}", "worker.concurency",
     'unknown key "concurency"; did you mean "concurrency"?'),
    ("wroker: {}\nworker: {queues: [a]}", "wroker", 'unknown section "wroker"; did you mean "worker"?'),
    ("worker: [a]", "worker", "expected a mapping of worker settings, got a list"),
    ("worker: {queues: [a], shutdown_timeout: ten}", "worker.shutdown_timeout",
     'expected a non-negative duration like "30s" or "1m", got "ten"'),
    ("worker: {queues: [a], shutdown_timeout: -1s}", "worker.shutdown_timeout",
     'expected a non-negative duration like "30s" or "1m", got "-1s"'),
    ("worker: {queues: [a], max_memory_per_child: lots}", "worker.max_memory_per_child",
     'expected a size like "512MB" or "1GiB", got "lots"'),
    ("worker: {queues: [a], concurrency: 0}", "worker.concurrency", "expected an integer from 1 to 100,000, got 0"),
    ("worker: {queues: [a], max_tasks_per_child: -1}", "worker.max_tasks_per_child",
     "expected an integer >= 0, got -1"),
    ("worker: {queues: [a], strict_priority: maybe}", "worker.strict_priority",
     'expected true or false, got "maybe"'),
    ("worker: {queues: [a]}\nbootstrap: {retries: 0}", "bootstrap.retries", "expected a positive integer, got 0"),
    ("worker: {queues: [a]}\nlogging: {level: loud}", "logging.level",
     'expected one of "debug", "info", "warning", "error", got "loud"'),
    ("worker: {queues: [a]}\nlogging: {format: xml}", "logging.format",
     'expected one of "auto", "human", "json", got "xml"'),
    ("worker: {queues: [a]}\nops: {listen: 'localhost:70000'}", "ops.listen",
     'expected "host:port" (port 0-65535) like "127.0.0.1:9465", or "off", got "localhost:70000"'),
    ("worker: {queues: [a]}\nops: {listen: 9465}", "ops.listen",
     'expected "host:port" (port 0-65535) like "127.0.0.1:9465", or "off", got 9465'),
    ("worker: {queues: [a]}\nops: {listen: '0.0.0.0:9465', enable_controls: true}", "ops.enable_controls",
     "needs ops.token"),
    ("worker: {queues: [a]}\ndeployment: {mode: sometimes}", "deployment.mode",
     'expected one of "long_running", "one_shot", got "sometimes"'),
    ("worker: {queues: [a]}\ndeployment: {code_path: ../up}", "deployment.code_path", 'no ".."'),
    ("worker: {queues: [a]}\ndeployment: {startup_cmd: 'python \"x'}", "deployment.startup_cmd",
     "cannot split the command line"),
    ("worker: {queues: [a]}\ndeployment: {git_url: 'ftp://x/y'}", "deployment.git_url", "the scheme must be"),
    ("worker: {queues: [a]}\ngit: {ssh_key: nope}", "git.ssh_key", "no such file"),
    ("worker: {queues: [a]}\nredis: {url: 'http://localhost:6379'}", "redis.url",
     'the scheme must be redis, rediss or unix, got "http"'),
    ("worker: {queues: [a]}\nredis: {db: 1}", "redis", "expected url"),
    ("worker: {queues: [a]}\nredis: {url: 'redis://h/0', addr: 'h:6379'}", "redis.addr", "not both"),
    ("worker: {queues: [a]}\nredis: {addr: 'h:6379', tls_ca_file: x}", "redis.tls_ca_file", "no such file"),
])
def test_each_problem_has_its_path_and_message(tmp_path, snippet, path, message):
    found = problems(tmp_path, SERVER + snippet + "\n")
    assert path in found, found
    assert message in found[path]


def test_server_fields_are_required_outside_local_mode(tmp_path):
    found = problems(tmp_path, "server: {url: 'ftp://x'}\nworker: {queues: [a]}\n")
    assert set(found) == {"server.url", "server.api_key"}
    assert found["server.url"].startswith("expected an http(s) URL")
    assert found["server.api_key"].startswith("required")


def test_git_url_and_path_are_mutually_exclusive(tmp_path):
    found = problems(tmp_path, """
worker: {queues: [a]}
redis: {url: "redis://localhost:6379/0"}
deployment: {git_url: "https://github.com/a/b.git", path: ".", startup_cmd: "python w.py"}
""")
    assert found == {"deployment.path": "deployment.git_url and deployment.path are mutually exclusive: give one"}


def test_local_mode_needs_a_startup_command(tmp_path):
    found = problems(tmp_path, "worker: {queues: [a]}\nredis: {url: 'redis://h'}\ndeployment: {path: .}\n")
    assert list(found) == ["deployment.startup_cmd"]


def test_five_distinct_mistakes_give_exactly_five_problems(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, FIVE_MISTAKES)
    assert [(p.path, p.line) for p in info.value.problems] == [
        ("worker.queues[1]", 5), ("worker.concurency", 6), ("worker.shutdown_timeout", 7),
        ("deployment.mode", 9), ("logging.level", 11),
    ]
    assert info.value.report().splitlines()[0].endswith("config.yml: 5 problems")


FIVE_MISTAKES = f"""\
server:
  url: http://localhost:3000
  api_key: {API_KEY}
worker:
  queues: [emails, "inference:high"]
  concurency: 4
  shutdown_timeout: ten
deployment:
  mode: sometimes
logging:
  level: loud
"""


def test_missing_file_and_yaml_syntax_errors_are_single_problems(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yml", {})
    assert [p.message for p in info.value.problems] == ["file not found"]
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"server:\n  api_key: {API_KEY}\n  url: [unclosed\n")
    (problem,) = info.value.problems
    assert problem.message.startswith("YAML syntax error at line 4, column 1")
    assert API_KEY not in str(info.value)


def test_duplicate_keys_are_reported(tmp_path):
    found = problems(tmp_path, SERVER + "worker:\n  queues: [a]\n  concurrency: 2\n  concurrency: 3\n")
    assert found == {"worker.concurrency": "duplicate key (first on line 7)"}


# --- local mode and Redis ---------------------------------------------------------------------

def test_local_mode_with_a_path_deployment(tmp_path):
    (tmp_path / "code").mkdir()
    config = load(tmp_path, """
worker: {queues: [a]}
redis: {url: "redis://:pa55word@localhost:6380/2"}
deployment: {path: code, startup_cmd: python worker.py}
""")
    assert config.local_mode and config.server.url is None
    assert config.deployment.path == tmp_path / "code"
    assert "pa55word" not in repr(config.redis) and "pa55word" not in str(config.redacted_dict())
    client = redis.Redis.from_url(config.redis.connection_url(), **config.redis.connection_kwargs())
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("localhost", 6380, 2, "pa55word")


def test_redis_addr_password_db_and_tls_build_a_client(tmp_path):
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "code").mkdir()
    config = load(tmp_path, """
worker: {queues: [a]}
redis: {addr: "redis.internal:6390", password: "p@ss/w0rd", db: 3, use_tls: true, tls_ca_file: ca.pem}
deployment: {path: code, startup_cmd: python worker.py}
""")
    r = config.redis
    assert r.connection_url() == "rediss://redis.internal:6390/3"
    client = redis.Redis.from_url(r.connection_url(), **r.connection_kwargs())
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "p@ss/w0rd" and kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert redis.Redis.from_url(r.url_with_password()).connection_pool.connection_kwargs["password"] == "p@ss/w0rd"


def test_redis_url_can_come_from_the_environment(tmp_path):
    (tmp_path / "code").mkdir()
    config = load(tmp_path, "worker: {queues: [a]}\ndeployment: {path: code, startup_cmd: python w.py}\n",
                  {"RUNDOWN_REDIS_URL": "unix:///run/redis.sock?db=1"})
    assert config.local_mode and config.redis.connection_url() == "unix:///run/redis.sock?db=1"


# --- secrets ----------------------------------------------------------------------------------

SECRET_FILE = """
server: {url: "http://localhost:3000", api_key: "api-key-SECRET1"}
worker: {queues: [a], concurrency: 0}
git: {token: "git-token-SECRET2"}
ops: {token: [ops-token-SECRET3]}
redis: {url: "redis://:redis-pw-SECRET4@localhost/0", password: "redis-pw-SECRET5"}
deployment: {git_url: "https://user:gh-SECRET6@github.com/a/b.git", startup_cmd: 'python "'}
"""


def test_secrets_never_appear_in_errors_or_repr(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, SECRET_FILE)
    text = str(info.value) + repr(info.value.problems)
    assert "ops.token: expected a string, got a list" in text
    for n in range(1, 7):
        assert f"SECRET{n}" not in text
    # Every secret was registered, so logs mask them too.
    assert logs.redact("api-key-SECRET1 gh-SECRET6 redis-pw-SECRET4") == "*** *** ***"


def test_secrets_are_hidden_in_repr_and_redacted_dict(tmp_path):
    config = load(tmp_path, SERVER + "worker: {queues: [a]}\ngit: {token: tok-abcdef}\n"
                  "deployment: {env_vars: {OPENAI_API_KEY: sk-hidden}}\n")
    assert API_KEY not in repr(config) and "tok-abcdef" not in repr(config)
    assert str(config.server.api_key) == "***" and repr(config.server.api_key) == "'***'"
    data = config.redacted_dict()
    assert data["server"]["api_key"] == "***" and data["git"]["token"] == "***"
    assert data["deployment"]["env_vars"] == {"OPENAI_API_KEY": "***"}
    assert data["ops"]["token"] is None and data["worker"]["queues"][0]["name"] == "a"
    assert API_KEY not in str(data)


def test_a_short_secret_does_not_garble_messages(tmp_path):
    found = problems(tmp_path, "server: {url: http://h, api_key: e}\nworker: {queues: [a], concurrency: x}\n")
    assert found == {"worker.concurrency": 'expected an integer from 1 to 100,000, got "x"'}


def test_one_shot_resource_limits(tmp_path):
    from agent.config import ConfigError, load_config

    path = tmp_path / "c.yml"
    path.write_text("redis: {url: 'redis://127.0.0.1:1/0'}\nworker: {queues: [jobs]}\n"
                    f"deployment: {{path: '{tmp_path}', startup_cmd: python w.py, mode: one_shot,\n"
                    "  one_shot_memory_limit: 256MB, one_shot_cpu_seconds: 5}\n")
    config = load_config(path, environ={})
    assert (config.deployment.one_shot_memory_limit, config.deployment.one_shot_cpu_seconds) == (
        256_000_000, 5)
    path.write_text(path.read_text().replace("256MB", "lots").replace("cpu_seconds: 5", "cpu_seconds: 0"))
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    paths = {p.path for p in err.value.problems}
    assert paths == {"deployment.one_shot_memory_limit", "deployment.one_shot_cpu_seconds"}


# --- capacity: concurrency, prefetch, processes, threads, async_limit -------------------------

WORKER = "worker:\n  queues: [a]\n"


def capacity(tmp_path: Path, worker: str = "", deployment: str = "",
             environ: dict[str, str] | None = None) -> Config:
    return load(tmp_path, SERVER + WORKER + worker + "deployment:\n  dir: d\n" + deployment, environ)


def capacity_problems(tmp_path: Path, worker: str = "", deployment: str = "",
                      environ: dict[str, str] | None = None) -> dict[str, str]:
    return problems(tmp_path, SERVER + WORKER + worker + "deployment:\n  dir: d\n" + deployment, environ)


def test_capacity_keys_are_parsed(tmp_path):
    config = capacity(tmp_path, "  concurrency: 64\n  prefetch: 16\n",
                      "  processes: 4\n  threads: 16\n  async_limit: 32\n")
    assert (config.worker.concurrency, config.worker.prefetch) == (64, 16)
    d = config.deployment
    assert (d.processes, d.threads, d.async_limit) == (4, 16, 32)
    assert config.warnings == ()


@pytest.mark.parametrize("value", ["auto", "AUTO", " Auto ", "null", ""])
def test_processes_auto_is_none(tmp_path, value):
    config = capacity(tmp_path, deployment=f"  processes: {value}\n")
    assert config.deployment.processes is None


def test_async_limit_defaults_to_worker_concurrency(tmp_path):
    config = capacity(tmp_path, "  concurrency: 40\n", "  threads: 4\n")
    assert (config.deployment.async_limit, config.deployment.threads) == (40, 4)


@pytest.mark.parametrize(("worker", "deployment"), [
    ("  prefetch: 0\n", ""), ("  prefetch: 1000\n", ""), ("  prefetch: '64'\n", ""),
    ("", "  threads: 1\n"), ("  concurrency: 256\n", "  threads: 256\n"),
    ("", "  processes: 1\n  threads: 10\n"), ("  concurrency: 256\n", "  processes: 256\n"),
    ("", "  async_limit: 1\n  processes: 1\n"),
])
def test_capacity_values_at_their_bounds_are_accepted(tmp_path, worker, deployment):
    capacity(tmp_path, worker, deployment)


@pytest.mark.parametrize(("worker", "deployment", "path", "message"), [
    ("  prefetch: -1\n", "", "worker.prefetch", "expected an integer from 0 to 1000, got -1"),
    ("  prefetch: 1001\n", "", "worker.prefetch", "expected an integer from 0 to 1000, got 1001"),
    ("  prefetch: lots\n", "", "worker.prefetch", 'expected an integer from 0 to 1000, got "lots"'),
    ("", "  threads: 0\n", "deployment.threads", "expected an integer from 1 to 256, got 0"),
    ("", "  threads: 257\n", "deployment.threads", "expected an integer from 1 to 256, got 257"),
    ("", "  processes: 0\n", "deployment.processes", 'expected "auto" or an integer from 1 to 256, got 0'),
    ("", "  processes: 257\n", "deployment.processes", 'expected "auto" or an integer from 1 to 256, got 257'),
    ("", "  processes: many\n", "deployment.processes", 'expected "auto" or an integer from 1 to 256, got "many"'),
    ("", "  processes: true\n", "deployment.processes", 'expected "auto" or an integer from 1 to 256, got true (a boolean)'),
    ("", "  async_limit: 0\n", "deployment.async_limit", "expected an integer from 1 to 100,000, got 0"),
    ("", "  max_in_flight_per_child: 0\n", "deployment.max_in_flight_per_child",
     "expected an integer from 1 to 100,000, got 0"),
])
def test_capacity_values_out_of_bounds_are_problems(tmp_path, worker, deployment, path, message):
    found = capacity_problems(tmp_path, worker, deployment)
    assert found == {path: message}


def test_capacity_environment_overrides(tmp_path):
    config = capacity(tmp_path, "  prefetch: 2\n", "  processes: 2\n  threads: 2\n", {
        "RUNDOWN_WORKER_CONCURRENCY": "48", "RUNDOWN_WORKER_PREFETCH": "32",
        "RUNDOWN_DEPLOYMENT_PROCESSES": "auto", "RUNDOWN_DEPLOYMENT_THREADS": "8",
        "RUNDOWN_DEPLOYMENT_ASYNC_LIMIT": "12",
    })
    assert (config.worker.concurrency, config.worker.prefetch) == (48, 32)
    assert (config.deployment.processes, config.deployment.threads, config.deployment.async_limit) == (None, 8, 12)
    config = capacity(tmp_path, environ={"RUNDOWN_DEPLOYMENT_PROCESSES": "6"})
    assert config.deployment.processes == 6


def test_bad_capacity_overrides_name_their_variables(tmp_path):
    found = capacity_problems(tmp_path, environ={
        "RUNDOWN_WORKER_PREFETCH": "5000", "RUNDOWN_DEPLOYMENT_THREADS": "0",
        "RUNDOWN_DEPLOYMENT_PROCESSES": "some"})
    assert found == {
        "worker.prefetch": "expected an integer from 0 to 1000, got \"5000\" (from RUNDOWN_WORKER_PREFETCH)",
        "deployment.threads": "expected an integer from 1 to 256, got \"0\" (from RUNDOWN_DEPLOYMENT_THREADS)",
        "deployment.processes": ('expected "auto" or an integer from 1 to 256, got "some" '
                                 "(from RUNDOWN_DEPLOYMENT_PROCESSES)"),
    }


def test_max_in_flight_per_child_is_a_deprecated_alias_of_async_limit(tmp_path):
    config = capacity(tmp_path, deployment="  max_in_flight_per_child: 7\n")
    assert config.deployment.async_limit == 7
    assert not hasattr(config.deployment, "max_in_flight_per_child")
    assert config.warnings == ("deployment.max_in_flight_per_child is deprecated: write "
                               "deployment.async_limit (async handlers at once per child)",)
    config = capacity(tmp_path, environ={"RUNDOWN_DEPLOYMENT_MAX_IN_FLIGHT_PER_CHILD": "3"})
    assert config.deployment.async_limit == 3
    assert any("write deployment.async_limit" in w for w in config.warnings)


def test_async_limit_and_its_alias_together_are_a_problem(tmp_path):
    found = capacity_problems(tmp_path, deployment="  async_limit: 4\n  max_in_flight_per_child: 4\n")
    assert found == {"deployment.max_in_flight_per_child": (
        "give deployment.async_limit or the deprecated deployment.max_in_flight_per_child, not both")}


def test_an_async_limit_variable_replaces_the_files_alias(tmp_path):
    config = capacity(tmp_path, deployment="  max_in_flight_per_child: 4\n",
                      environ={"RUNDOWN_DEPLOYMENT_ASYNC_LIMIT": "9"})
    assert config.deployment.async_limit == 9
    assert config.warnings == ()


def test_auto_processes_above_256_children_is_a_problem_saying_what_to_set(tmp_path):
    found = capacity_problems(tmp_path, "  concurrency: 1000\n")
    assert found == {"deployment.processes": (
        "auto (the default) would start 1000 children for sync handlers (worker.concurrency 1000 / "
        "deployment.threads 1), above the limit of 256: raise deployment.threads to 4 or more for "
        "sync code, or set deployment.processes: 1 for async-only code (or lower worker.concurrency)")}
    found = capacity_problems(tmp_path, "  concurrency: 600\n", "  processes: auto\n  threads: 2\n")
    assert found["deployment.processes"].startswith("auto would start 300 children")
    assert "raise deployment.threads to 3 or more" in found["deployment.processes"]
    # Past 256 x 256 no thread count is enough: only the async-only fix is offered.
    found = capacity_problems(tmp_path, "  concurrency: 70000\n", "  threads: 256\n")
    assert "raise deployment.threads" not in found["deployment.processes"]
    assert "set deployment.processes: 1 for async-only code" in found["deployment.processes"]


def test_the_suggested_fixes_for_auto_are_valid(tmp_path):
    capacity(tmp_path, "  concurrency: 1000\n", "  threads: 4\n")  # exactly 250 children
    capacity(tmp_path, "  concurrency: 512\n", "  threads: 2\n")  # exactly 256 children
    config = capacity(tmp_path, "  concurrency: 1000\n", "  processes: 1\n")
    assert config.deployment.async_limit == 1000
    assert any("above the 1 sync handler slot " in w for w in config.warnings)


def test_auto_with_a_small_async_limit_above_256_children_is_a_problem(tmp_path):
    found = capacity_problems(tmp_path, "  concurrency: 600\n", "  threads: 4\n  async_limit: 2\n")
    assert found == {"deployment.async_limit": (
        "with deployment.processes: auto, async-only code would start 300 children (worker.concurrency "
        "600 / deployment.async_limit 2), above the limit of 256: raise deployment.async_limit to 3 or "
        "more, or give deployment.processes a number, or lower worker.concurrency")}
    found = capacity_problems(tmp_path, "  concurrency: 600\n", "  threads: 4\n  max_in_flight_per_child: 2\n")
    assert list(found) == ["deployment.max_in_flight_per_child"]
    capacity(tmp_path, "  concurrency: 600\n", "  processes: 4\n  threads: 150\n  async_limit: 2\n")


def test_explicit_processes_below_concurrency_is_a_warning(tmp_path):
    config = capacity(tmp_path, "  concurrency: 128\n", "  processes: 2\n  threads: 1\n")
    assert config.warnings == (
        "worker.concurrency 128 is above the 2 sync handler slots of the deployment (processes 2 x "
        "threads 1): at most 2 sync handlers run at once; set deployment.processes: auto, "
        "deployment.processes: 128 or deployment.threads: 64, or lower worker.concurrency",)
    # Only the fixes within the bounds (256 children, 256 threads) are offered.
    config = capacity(tmp_path, "  concurrency: 400\n", "  processes: 1\n  threads: 2\n")
    (warning,) = config.warnings
    assert warning.endswith("at most 2 sync handlers run at once; set deployment.processes: auto or "
                            "deployment.processes: 200, or lower worker.concurrency")
    config = capacity(tmp_path, "  concurrency: 500\n", "  processes: 2\n")
    (warning,) = config.warnings
    assert warning.endswith("; set deployment.threads: 250, or lower worker.concurrency")
    config = capacity(tmp_path, "  concurrency: 100000\n", "  processes: 1\n")
    (warning,) = config.warnings
    assert warning.endswith("at most 1 sync handler runs at once; lower worker.concurrency")


@pytest.mark.parametrize(("worker", "deployment"), [
    ("  concurrency: 10\n", "  processes: 10\n"),
    ("  concurrency: 64\n", "  processes: 4\n  threads: 16\n"),
    ("  concurrency: 10\n", "  processes: 3\n  threads: 4\n"),
    ("  concurrency: 2000\n", "  processes: 1\n  mode: one_shot\n"),  # one_shot: a process per task
    ("  concurrency: 2000\n", "  mode: one_shot\n"),
])
def test_enough_sync_slots_or_one_shot_give_no_capacity_finding(tmp_path, worker, deployment):
    assert capacity(tmp_path, worker, deployment).warnings == ()


def test_a_bad_value_does_not_add_a_capacity_problem_from_defaults(tmp_path):
    found = capacity_problems(tmp_path, "  concurrency: 1000\n", "  threads: 0\n")
    assert list(found) == ["deployment.threads"]


def test_per_queue_limit_above_concurrency_is_still_a_warning(tmp_path):
    config = load(tmp_path, SERVER + "worker: {queues: ['a:20'], concurrency: 8}\n")
    assert config.warnings == ("queue a: its limit 20 is above worker.concurrency 8, which caps it",)


def test_planned_children_and_slots(tmp_path):
    from agent.config import effective_async_limit, plan_children, planned_children, slots_per_child

    config = capacity(tmp_path, "  concurrency: 100\n", "  threads: 8\n  async_limit: 30\n")
    assert (planned_children(config, all_async=False), planned_children(config, all_async=True)) == (13, 4)
    assert (slots_per_child(config, all_async=False), slots_per_child(config, all_async=True)) == (8, 30)
    assert effective_async_limit(config) == 30
    config = capacity(tmp_path, "  concurrency: 100\n", "  processes: 3\n  threads: 8\n")
    assert (planned_children(config, all_async=False), planned_children(config, all_async=True)) == (3, 3)
    config = capacity(tmp_path)  # the defaults: concurrency 10, threads 1, async_limit 10
    assert (planned_children(config, all_async=False), planned_children(config, all_async=True)) == (10, 1)
    # A control server's explicit processes wins; None is auto.
    assert plan_children(5, concurrency=100, threads=1, async_limit=100, all_async=False) == 5
    assert plan_children(None, concurrency=100, threads=3, async_limit=100, all_async=False) == 34
    assert plan_children(None, concurrency=100, threads=3, async_limit=100, all_async=True) == 1
    # A hand-built config without async_limit uses worker.concurrency.
    assert effective_async_limit(Config()) == 10


def test_capacity_summary(tmp_path):
    from agent.config import capacity_summary

    assert capacity_summary(capacity(tmp_path)) == (
        "capacity: 10 handlers at once (worker.concurrency); children: auto = 10 for sync handlers "
        "(1 thread each) or 1 if every handler is async (async_limit 10); prefetch 0 per child")
    assert capacity_summary(capacity(tmp_path, "  concurrency: 64\n  prefetch: 32\n", "  threads: 8\n")) == (
        "capacity: 64 handlers at once (worker.concurrency); children: auto = 8 for sync handlers "
        "(8 threads each) or 1 if every handler is async (async_limit 64); prefetch 32 per child")
    assert capacity_summary(capacity(tmp_path, deployment="  processes: 2\n")) == (
        "capacity: 10 handlers at once (worker.concurrency); children: 2 x 1 thread = 2 sync slots; "
        "async_limit 10 per child; prefetch 0 per child")
    assert capacity_summary(capacity(tmp_path, "  concurrency: 1\n", "  processes: 1\n")) == (
        "capacity: 1 handler at once (worker.concurrency); children: 1 x 1 thread = 1 sync slot; "
        "async_limit 1 per child; prefetch 0 per child")
    assert capacity_summary(capacity(tmp_path, deployment="  mode: one_shot\n")) == (
        "capacity: 10 handlers at once (worker.concurrency); children: one_shot, a fresh process per task")


def test_deployment_spec_processes_none_is_auto(tmp_path):
    from agent.bootstrap.models import DeploymentSpec

    (tmp_path / "code").mkdir()
    for processes, expected in (("auto", None), ("3", 3)):
        config = load(tmp_path, f"""
worker: {{queues: [a]}}
redis: {{url: "redis://localhost:6379/0"}}
deployment: {{path: code, startup_cmd: python w.py, processes: {processes}}}
""")
        assert DeploymentSpec.from_config(config.deployment, "a").processes == expected
    assert DeploymentSpec(path=tmp_path).processes is None
    assert DeploymentSpec(path=tmp_path, processes=1).processes == 1
    with pytest.raises(ValueError, match="processes must be >= 1"):
        DeploymentSpec(path=tmp_path, processes=0)


# --- limits: what a generated or hostile config cannot do ---------------------------------------

def _queue_list(n: int) -> str:
    return "[" + ", ".join(f"q{i}" for i in range(n)) + "]"


def test_at_most_1000_queues_per_agent(tmp_path):
    assert len(load(tmp_path, SERVER + f"worker: {{queues: {_queue_list(1000)}}}\n").worker.queues) == 1000
    found = problems(tmp_path, SERVER + f"worker: {{queues: {_queue_list(5000)}}}\n")
    assert found == {"worker.queues": "5,000 queues, above the limit of 1,000 per agent"}
    found = problems(tmp_path, SERVER + "worker: {queues: [a]}\n",
                     {"RUNDOWN_WORKER_QUEUES": ",".join(f"q{i}" for i in range(1001))})
    assert found == {"worker.queues": "1,001 queues, above the limit of 1,000 per agent (from RUNDOWN_WORKER_QUEUES)"}


@pytest.mark.parametrize(("name", "fragment"), [
    (r'"a\u0001b"', "it contains U+0001 at position 2"),
    (r'"\e[31mred"', "it contains U+001B at position 1"),
    (r'"abc\u202Efdp.exe"', "it contains U+202E at position 4"),  # right-to-left override
    (r'"zero\u200Bwidth"', "it contains U+200B at position 5"),
    (r'"non\u00A0breaking"', "it contains U+00A0 at position 4"),
    (r'"a\u0085b"', "it contains U+0085 at position 2"),
    ('"   "', "a queue name must not be empty"),
    ('"' + "q" * 257 + '"', "a queue name is at most 256 characters, got 257"),
    ('"{tag}"', "no spaces, braces or colons"),
])
def test_queue_names_must_be_printable_and_at_most_256_characters(tmp_path, name, fragment):
    for spec in (name, f"{{name: {name}}}"):
        found = problems(tmp_path, SERVER + f"worker: {{queues: [ok, {spec}]}}\n")
        (path,) = found
        assert path.startswith("worker.queues[1]")
        assert fragment in found[path]
        assert found[path].isprintable()


def test_printable_unicode_queue_names_are_accepted(tmp_path):
    names = ["задачи", "メール.高", "émails-🚀", "q" * 256]
    config = load(tmp_path, SERVER + "worker:\n  queues:\n" + "".join(f'    - "{n}"\n' for n in names))
    assert [q.name for q in config.worker.queues] == names


def test_a_control_character_from_the_environment_is_refused(tmp_path):
    found = problems(tmp_path, SERVER + "worker: {queues: [a]}\n", {"RUNDOWN_WORKER_QUEUES": "a,b\x07c"})
    assert found == {"worker.queues[1]": "a queue name is printable characters without whitespace; it "
                                         "contains U+0007 at position 2 (from RUNDOWN_WORKER_QUEUES)"}


@pytest.mark.parametrize(("snippet", "path", "message"), [
    ("worker: {queues: [a], concurrency: 100001}", "worker.concurrency",
     "expected an integer from 1 to 100,000, got 100001"),
    ("worker: {queues: [{name: a, weight: 1000001}]}", "worker.queues[0].weight",
     "expected an integer from 1 to 1,000,000, got 1000001"),
    ("worker: {queues: [{name: a, concurrency: 100001}]}", "worker.queues[0].concurrency",
     "expected an integer from 1 to 100,000, got 100001"),
    ("worker: {queues: ['a:100001']}", "worker.queues[0]",
     'the limit in "a:100001" must be an integer from 1 to 100,000'),
    ("worker: {queues: ['a:" + "9" * 5000 + "']}", "worker.queues[0]", "must be an integer from 1 to 100,000"),
    ("worker: {queues: [a], concurrency: '" + "9" * 5000 + "'}", "worker.concurrency",
     "expected an integer from 1 to 100,000, got"),
    ("worker: {queues: [a], shutdown_timeout: 8d}", "worker.shutdown_timeout",
     'expected a non-negative duration like "30s" or "1m", got "8d"'),
    ("worker: {queues: [a], shutdown_timeout: 169h}", "worker.shutdown_timeout",
     'expected a non-negative duration like "30s" or "1m", at most 168h, got "169h"'),
    ("worker: {queues: [a], max_memory_per_child: 1025TiB}", "worker.max_memory_per_child",
     'expected a size like "512MB" or "1GiB", at most 1024TiB, got "1025TiB"'),
    ("worker: {queues: [a], max_memory_per_child: " + "9" * 400 + "TB}", "worker.max_memory_per_child",
     "at most 1024TiB"),
    ("worker: {queues: [a]}\nretry: {max_retry: 2147483648}", "retry.max_retry",
     "expected an integer from 0 to 2,147,483,647, got 2147483648"),
    ("worker: {queues: [a]}\ndeployment: {async_limit: 100001}", "deployment.async_limit",
     "expected an integer from 1 to 100,000, got 100001"),
    ("worker: {queues: [a]}\ndeployment: {mode: one_shot, one_shot_cpu_seconds: 604801}",
     "deployment.one_shot_cpu_seconds", "expected an integer from 1 to 604,800, got 604801"),
])
def test_numbers_beyond_what_the_agent_can_use_are_problems(tmp_path, snippet, path, message):
    found = problems(tmp_path, SERVER + snippet + "\n")
    assert path in found, found
    assert message in found[path], found[path]


def test_largest_accepted_values(tmp_path):
    config = load(tmp_path, SERVER + "worker: {queues: [{name: a, weight: 1000000, concurrency: 100000}], "
                  "concurrency: 100000, shutdown_timeout: 168h, max_memory_per_child: 1024TiB}\n"
                  "retry: {max_retry: 2147483647}\ndeployment: {processes: 1, async_limit: 100000}\n")
    assert config.worker.concurrency == 100_000 and config.worker.shutdown_timeout == 7 * 86400
    assert config.retry.max_retry == 2**31 - 1


def test_env_vars_are_bounded_in_number_size_and_characters(tmp_path):
    many = ", ".join(f"V{i}: x" for i in range(1001))
    found = problems(tmp_path, SERVER + f"worker: {{queues: [a]}}\ndeployment: {{env_vars: {{{many}}}}}\n")
    assert found == {"deployment.env_vars": "1,001 variables, above the limit of 1,000"}
    found = problems(tmp_path, SERVER + 'worker: {queues: [a]}\ndeployment: {env_vars: {A: "x\\0y", '
                     f'B: "{"b" * 131_070}", C: "{"c" * 131_069}"}}}}\n')
    assert found == {
        "deployment.env_vars.A": "the value contains a NUL character, which an environment variable cannot hold",
        "deployment.env_vars.B": ("NAME=value is 131,072 bytes; an environment entry must be under 128 KiB "
                                  "(the kernel refuses to start a process otherwise)"),
    }


def test_a_report_lists_the_first_100_problems(tmp_path):
    bad = ", ".join(f"'q{i}:0'" for i in range(150))
    with pytest.raises(ConfigError) as info:
        load(tmp_path, SERVER + f"worker: {{queues: [{bad}]}}\n")
    assert len(info.value.problems) == 150
    lines = info.value.report().splitlines()
    assert lines[0].endswith("150 problems") and len(lines) == 102
    assert lines[-1] == "  ... and 50 more"


def test_keys_are_shown_printable_and_short(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, SERVER + 'worker: {queues: [a], "con\\x1b[2Jcurrency": 1, "' + "k" * 1000 + '": 2}\n')
    report = info.value.report()
    assert "\x1b" not in report and "\\x1b[2J" in report
    assert max(len(line) for line in report.splitlines()) < 500
