"""Config files: any text, any YAML tree gives a Config or a ConfigError, never a crash.

The structure attacks (deep nesting, alias fans and bombs, recursive aliases, huge scalars,
control and bidi characters, odd keys and tags) also go through the control server's queues
file loader. Every answer must come quickly, in bounded memory, and read cleanly.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from agent import logs
from agent.config import Config, ConfigError, load_config
from agent.server.queues import QueuesFileError, ServerSettings, load_queues_file
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
        _readable(exc.report())
        return None
    assert isinstance(config, Config)
    return config


def _readable(report: str) -> None:
    """A report a terminal shows as it is: printable lines of a sane length, valid UTF-8."""
    report.encode("utf-8")
    for line in report.splitlines():
        assert line.isprintable(), line[:200]
        assert len(line) < 2000, line[:200]


def _answer(path) -> None:
    """The agent's and the control server's loaders answer ``path`` within 5 s of CPU time (not
    wall time: the machine may be busy) and 100 MB."""
    tracemalloc.start()
    start = time.process_time()
    try:
        _load(path, {})
        try:
            assert isinstance(load_queues_file(path, environ={}), ServerSettings)
        except QueuesFileError as exc:
            assert exc.problems
            _readable(str(exc))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logs.clear_secrets()  # each example registers its own; one process would load one file
    assert time.process_time() - start < 5.0
    assert peak < 100 * 1024 * 1024, peak


@bounded(300)
@given(doc=documents, environ=st.dictionaries(st.sampled_from(["VAR", "RUNDOWN_WORKER_CONCURRENCY",
                                                              "RUNDOWN_REDIS_URL", "RUNDOWN_OPS_LISTEN"]),
                                              st.text(max_size=20), max_size=3))
@example(doc={"deployment": {"path": "\x1b"}}, environ={})  # a missing path was shown raw
@example(doc={"deployment": {"path": "ok", "startup_cmd": "x"}, "ops": {"tls_cert": "\x07"}}, environ={})
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


# --- YAML structure attacks ----------------------------------------------------------------------

ODD_SCALARS = [
    "null", "~", "true", "no", "0x1F", "0o17", "1_000", "190:20:30", ".nan", "-.inf", "2020-13-45",
    "2001-12-14t21:59:43.10-05:00", "1" * 5000, "!!binary aGVsbG8=", "!!binary not*base64", "!!int x", "!!float y",
    "!!timestamp 2020-99-01", "!!python/object:os.system x", "!custom tag", "!!set {a, b}", "!!omap [a: 1]",
    "!!pairs [a: 1, a: 2]", '"\\x00"', '"\\e[2J"', '"\\u202e"', '"\\ud800"', '"\\U0001F600"', "'${VAR}'",
    '"$${"', "-", "?", ":", "'", '"', "&", "*", "|", ">", "%", "@", "`",
]
TEXT = st.text(st.characters(codec="utf-8") | st.characters(min_codepoint=0, max_codepoint=0x3000), max_size=40)
YAML_KEYS = st.sampled_from(SECTIONS + KEYS + ["<<", "? [a, b]", "1", "null", "true", "''", '"a\\tb"']) | TEXT.map(json.dumps)


@st.composite
def flow_node(draw, anchors: list[str], depth: int = 0) -> str:
    """One YAML node in flow style, with anchors, aliases (also to open nodes: recursion),
    tags and quoted text of any characters."""
    kind = draw(st.sampled_from(["scalar", "text", "alias", "list", "map"] if depth < 6 else ["scalar", "text"]))
    anchor = ""
    if draw(st.integers(0, 4)) == 0:
        anchor = f"a{len(anchors)}"
        anchors.append(anchor)
    if kind == "alias" and anchors:
        return f"*{draw(st.sampled_from(anchors))}"
    prefix = f"&{anchor} " if anchor else ""
    if kind == "scalar":
        return prefix + draw(st.sampled_from(ODD_SCALARS))
    if kind == "text":
        return prefix + json.dumps(draw(TEXT))
    count = draw(st.integers(0, 5))
    if kind == "list":
        return prefix + "[" + ", ".join(draw(flow_node(anchors, depth + 1)) for _ in range(count)) + "]"
    pairs = [f"{draw(YAML_KEYS)}: {draw(flow_node(anchors, depth + 1))}" for _ in range(count)]
    return prefix + "{" + ", ".join(pairs) + "}"


@st.composite
def shaped_documents(draw) -> str:
    anchors: list[str] = []
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        lines.append(f"{draw(YAML_KEYS)}: {draw(flow_node(anchors))}")
    return "\n".join(lines) + "\n"


@bounded(300)
@given(text=shaped_documents())
def test_random_yaml_shapes_anchors_tags_and_characters_are_answered(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _answer(path)


@st.composite
def alias_fans(draw) -> str:
    """Levels of anchors, each aliasing the level below ``fan`` times (the billion laughs when
    fan and levels are large), as lists or as ``<<`` merges, used where a config expects a list,
    a mapping or a string."""
    levels, fan = draw(st.integers(1, 14)), draw(st.integers(1, 12))
    merge = draw(st.booleans())
    seed = json.dumps(draw(st.sampled_from(["lol", "q", "a" * 1000, "${VAR:-x}" * 50])))
    if merge:
        lines = [f"x0: &l0 {{k0: {seed}}}"] + [
            f"x{i}: &l{i} {{<<: [{', '.join([f'*l{i - 1}'] * fan)}], k{i}: {seed}}}" for i in range(1, levels)]
    else:
        lines = [f"x0: &l0 [{seed}]"] + [f"x{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels)]
    top = f"*l{levels - 1}"
    use = draw(st.sampled_from([
        f"worker: {{queues: {top}}}", f"deployment: {{env_vars: {top}}}", f"server: {{url: {top}}}",
        f"queues: {{q: {{deployment: {{env_vars: {top}}}}}}}", f"api_keys: {top}", f"worker: {top}"]))
    return "\n".join(lines + [use]) + "\n"


@bounded(150)
@given(text=alias_fans())
def test_alias_fans_and_bombs_are_answered_quickly_in_bounded_memory(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_text(text)
    _answer(path)


@st.composite
def deep_documents(draw) -> str:
    depth = draw(st.integers(1, 3000))
    style = draw(st.sampled_from(["flow list", "flow map", "block list", "block map", "mixed"]))
    if style == "flow list":
        body = "[" * depth + "1" + "]" * depth
    elif style == "flow map":
        body = "{a: " * depth + "1" + "}" * depth
    elif style == "block list":
        body = "- " * depth + "x"
    elif style == "block map":
        depth = min(depth, 400)  # indentation makes a block map quadratic in size
        body = "\n" + "".join(" " * (i + 1) + "k:\n" for i in range(depth)) + " " * (depth + 1) + "v"
    else:
        body = "[{a: " * (depth // 2) + "1" + "}]" * (depth // 2)
    section = draw(st.sampled_from(["worker", "deployment", "queues", "api_keys", "x"]))
    return f"{section}: {body}\n"


@bounded(100)
@given(text=deep_documents())
def test_deep_nesting_is_answered(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_text(text)
    _answer(path)


@bounded(40)
@given(size=st.sampled_from([0, 1, 255, 256, 257, 4096, 131_072, 999_000, 1_000_001]),
       char=st.sampled_from(["q", "é", "\\x01", "\\u202e", "\\0", " ", "${VAR:-x}", "\\n"]),
       where=st.sampled_from(["worker: {{queues: [\"{v}\"]}}", "deployment: {{env_vars: {{A: \"{v}\"}}}}",
                              "server: {{url: \"https://{v}@h\", api_key: \"{v}\"}}", "\"{v}\": 1",
                              "queues: {{\"{v}\": {{deployment: {{secrets: {{A: \"{v}\"}}}}}}}}"]))
def test_huge_and_strange_scalars_are_answered(tmp_path_factory, size, char, where):
    value = (char * size)[:size] if len(char) == 1 else char * max(1, size // len(char))
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_text(where.format(v=value) + "\n")
    _answer(path)
