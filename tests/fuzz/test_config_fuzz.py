"""Config files: any text, any YAML tree gives a Config or a ConfigError, never a crash."""

from __future__ import annotations

import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.config import Config, ConfigError, load_config
from tests.fuzz.settings import bounded

SECTIONS = ["server", "worker", "bootstrap", "deployment", "git", "retry", "ops", "logging", "redis"]
KEYS = ["url", "api_key", "queues", "queue", "concurrency", "strict_priority", "shutdown_timeout",
        "max_tasks_per_child", "max_memory_per_child", "retries", "retry_delay", "dir", "git_url",
        "branch", "commit", "code_path", "path", "startup_cmd", "env_vars", "startup_timeout", "mode",
        "processes", "max_in_flight_per_child", "threads", "async_limit", "prefetch", "venv",
        "requirements", "ssh_key", "token",
        "known_hosts", "accept_new_host_keys", "max_retry", "listen", "enable_controls", "level",
        "format", "addr", "password", "db", "use_tls", "tls_ca_file", "tls_cert_file", "tls_key_file",
        "name", "weight", "bogus"]

scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
           | st.text(max_size=30) | st.sampled_from(
               ["redis://h:6379/0", "rediss://:pw@h:1/0", "redis+cluster://a:1,b:2", "redis+sentinel://s:1/m",
                "redis+sentinel://", "5s", "1.5GB", "-1", "0", "${VAR}", "${VAR:-x}", "$${", "127.0.0.1:0",
                "0.0.0.0:9465", "long_running", "one_shot", "auto", "none", "/nonexistent", ".", "~"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
                      max_leaves=15)
documents = st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8),
                            st.dictionaries(st.sampled_from(KEYS), values, max_size=6) | values,
                            max_size=6)


def _load(path, environ):
    try:
        config = load_config(path, environ=environ)
    except ConfigError as exc:
        assert exc.problems and all(p.path is not None and p.message for p in exc.problems)
        assert exc.report()
        return None
    assert isinstance(config, Config)
    return config


@bounded(300)
@given(doc=documents, environ=st.dictionaries(st.sampled_from(["VAR", "RUNDOWN_WORKER_CONCURRENCY",
                                                              "RUNDOWN_REDIS_URL", "RUNDOWN_OPS_LISTEN"]),
                                              st.text(max_size=20), max_size=3))
def test_any_yaml_tree_gives_a_config_or_a_config_error(tmp_path_factory, doc, environ):
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _load(path, environ)


@bounded(200)
@given(st.binary(max_size=600) | st.text(max_size=600).map(str.encode))
def test_any_bytes_give_a_config_or_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_bytes(data)
    _load(path, {})
