"""Property-based tests (hypothesis): every input either parses to something valid or raises
EdgehostError with a one-line message, never another exception type.

Covers slugs (layout.check_slug), times and txids (restore.parse_time, parse_txid), the kit's settings
(settings.load_settings with generated edgehost.toml and environment values) and litestream.yml
(litestream.read_config with generated mutations of the repo's file).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from edgehost.errors import BadInput, EdgehostError
from edgehost.engine.layout import check_slug, is_slug
from edgehost.engine.litestream import LitestreamConfig, read_config
from edgehost.ops.restore import parse_time, parse_txid
from edgehost.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
# Moderate by default (the whole file runs in ~15 s); EDGEHOST_PROPERTY_EXAMPLES=5000 digs deeper.
_EXAMPLES = int(os.environ.get("EDGEHOST_PROPERTY_EXAMPLES", "0")) or None
FAST = settings(max_examples=_EXAMPLES or 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=_EXAMPLES or 120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Known bugs these properties found (docs/reliability.md, "Bugs found"). Each has a minimal reproduction
# in test_known_bugs_still_reproduce (strict xfail: it fails loudly once fixed). The properties accept
# exactly these signatures, so a fix means deleting the entry here and its reproduction below.
# All found bugs are fixed (B3, B6, B7: the typed settings model and one-line YAML errors); a new one
# found by these properties goes here with its signature, and its reproduction into FIXED_BUGS below.
KNOWN_CRASHES: dict[tuple[str, str, str], str] = {}
KNOWN_MULTILINE: dict[str, str] = {}
KNOWN_ACCEPTED_INVALID: set[str] = set()
KNOWN = object()  # the outcome of an input that hits a known bug


def one_line(exc: BaseException) -> None:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)


def crash_signature(exc: BaseException) -> tuple[str, str, str] | None:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/edgehost/" in f.filename]
    if not frames:
        return None
    return type(exc).__name__, frames[-1].name, (frames[-1].line or "").strip()


def parses_or_bad_input(fn, *args, **kwargs):
    """Call fn: its value; None for an EdgehostError with a one-line message; KNOWN for a known bug.

    Any other exception (or a multi-line message) fails the test.
    """
    try:
        return fn(*args, **kwargs)
    except EdgehostError as exc:
        if "\n" in str(exc) and any(marker in str(exc) for marker in KNOWN_MULTILINE):
            return KNOWN
        one_line(exc)
        return None
    except Exception as exc:
        if crash_signature(exc) in KNOWN_CRASHES:
            return KNOWN
        raise


# --- slugs ----------------------------------------------------------------------------------


SLUG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-"


def slug_model(s: str) -> bool:
    """The slug rule in plain words: 1-63 of [a-z0-9-], not starting with a hyphen."""
    return 1 <= len(s) <= 63 and all(c in SLUG_ALPHABET for c in s) and s[0] != "-"


@FAST
@given(st.one_of(st.text(max_size=80), st.text(alphabet=SLUG_ALPHABET + "A_.\n ", max_size=70)))
@example("a" * 63)
@example("a" * 64)
@example("-a")
@example("abc\n")
@example("ab/c")
@example("..")
def test_a_slug_is_valid_exactly_when_the_rule_says_so(text):
    got = parses_or_bad_input(check_slug, text)
    assert (got == text) == slug_model(text)
    assert is_slug(text) == slug_model(text)
    if got is not None:  # usable as one path component
        assert "/" not in got and got not in (".", "..") and not got.startswith("-")


@FAST
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3), max_size=2)))
def test_a_slug_that_is_not_text_is_bad_input(value):
    with pytest.raises(BadInput) as exc:
        check_slug(value)
    one_line(exc.value)


# --- times and txids ------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 14, 3, tzinfo=timezone.utc)

relative_times = st.builds(
    lambda number, unit: f"-{number}{unit}",
    st.one_of(st.integers(0, 10**25).map(str), st.decimals(0, 10**12, places=3, allow_nan=False).map(str)),
    st.sampled_from("smhdwy"),
)
aware_datetimes = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                               timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-11)),
                                                          timezone(timedelta(hours=13, minutes=45))]))
time_texts = st.one_of(
    st.text(max_size=40),
    relative_times,
    aware_datetimes.map(lambda d: d.isoformat()),
    aware_datetimes.map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: refused
)


@FAST
@given(time_texts)
@example("-15m")
@example("2026-11-21T14:03:00Z")
@example("2026-11-21T14:03:00")
@example("")
@example("-1000000d")  # B1
def test_parse_time_gives_a_utc_time_not_in_the_future_or_bad_input(text):
    when = parses_or_bad_input(parse_time, text, now=NOW)
    if when is not None and when is not KNOWN:
        assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
        assert when <= NOW + timedelta(seconds=1)


@FAST
@given(aware_datetimes.filter(lambda d: d.astimezone(timezone.utc) <= NOW))
def test_parse_time_reads_back_what_isoformat_wrote(when):
    assert parse_time(when.isoformat(), now=NOW) == when.astimezone(timezone.utc)


@FAST
@given(st.integers(0, 10**5), st.sampled_from("smhdw"))
def test_relative_times_are_that_long_ago(number, unit):
    got = parse_time(f"-{number}{unit}", now=NOW)
    assert NOW - got == timedelta(seconds=number * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit])


@FAST
@given(st.one_of(st.text(max_size=30), st.text(alphabet="0123456789abcdefABCDEFxX_ -+", max_size=24),
                 st.integers(-5, 2**66).map(lambda n: f"{n:x}" if n >= 0 else f"-{-n:x}")))
@example("0x2a")
@example("0")
@example("ffffffffffffffff")
@example("10000000000000000")
def test_parse_txid_gives_a_64_bit_positive_id_or_bad_input(text):
    got = parses_or_bad_input(parse_txid, text)
    if got is not None:
        assert got is not KNOWN and isinstance(got, int) and 0 < got < 2**64


@FAST
@given(st.integers(1, 2**64 - 1))
def test_parse_txid_reads_what_litestream_prints(txid):
    assert parse_txid(f"{txid:016x}") == txid
    assert parse_txid(f"0x{txid:X}") == txid


@FAST
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=4), st.lists(st.text(max_size=2), max_size=2)))
def test_parse_txid_of_something_not_text_is_bad_input(value):
    assert parses_or_bad_input(parse_txid, value) in (None, KNOWN)


# --- settings: generated edgehost.toml and environment -------------------------------------


def toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_document(doc: dict) -> str:
    lines, tables = [], []
    for key, value in doc.items():
        (tables if isinstance(value, dict) else lines).append((key, value))
    text = "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in lines)
    for key, table in tables:
        text += f"[{toml_string(key)}]\n" + "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items())
    return text


INTERESTING_TEXT = ["", " ", "0", "-1", "1", "8080", "65535", "65536", "1e3", "nan", "inf", "-inf", "1.5", "true",
                    "s3://ab", "s3://ab/x", "s3://bucket/prefix/", "s3://", "file:///tmp/replica", "http://x/y",
                    "gs://b/p", "~/data", "../data", "/abs/data", "data dir", ".hidden", "a/b", "honestcam.db",
                    "honestcam-study.db", "edgehost portal --x", "${HOME}", "127.0.0.1", "gs://x\ny",
                    "s3://ab\n/x", "s3://my bucket/x", "s3://Bucket/x"]
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(INTERESTING_TEXT),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=16),
)
toml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=2), max_leaves=4)

TOP_KEYS = ["data_dir", "state_dir", "log_dir", "litestream_config", "replica_url", "s3_endpoint", "s3_region",
            "global_db_name", "property_db_name", "lag_alert_seconds", "metrics_port", "litestream_stop_timeout"]
SECTIONS = {
    "portal": ["command", "host", "port", "stop_timeout"],
    "tunnel": ["enabled", "config", "binary", "metrics_port"],
    "restart": ["initial_backoff", "max_backoff", "healthy_after", "crash_loop_failures", "crash_loop_window",
                "exit_on_failure"],
}
ENV_NAMES = ["EDGEHOST_DATA_DIR", "EDGEHOST_STATE_DIR", "EDGEHOST_LOG_DIR", "EDGEHOST_REPLICA_URL",
             "EDGEHOST_S3_ENDPOINT", "EDGEHOST_S3_REGION", "EDGEHOST_GLOBAL_DB_NAME", "EDGEHOST_PROPERTY_DB_NAME",
             "EDGEHOST_PORTAL_PORT",
             "EDGEHOST_PORTAL_HOST", "EDGEHOST_PORTAL_COMMAND", "EDGEHOST_LAG_ALERT_SECONDS", "EDGEHOST_METRICS_PORT",
             "EDGEHOST_TUNNEL_CONFIG", "R2_BUCKET", "R2_ACCOUNT_ID", "R2_PREFIX"]

toml_docs = st.fixed_dictionaries({}, optional={
    **{k: toml_values for k in TOP_KEYS},
    **{name: st.dictionaries(st.sampled_from(keys + ["typo"]), toml_values, max_size=4)
       for name, keys in SECTIONS.items()},
    "unknown_key": toml_values,
})
env_values = st.one_of(st.sampled_from(INTERESTING_TEXT), st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=16))
environments = st.dictionaries(st.sampled_from(ENV_NAMES), env_values, max_size=5)


def valid_port(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= 65535


def valid_seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def settings_problems(s: Settings) -> list[str]:
    """What is wrong with resolved settings; [] when every field is usable."""
    problems = []
    for name in ("home", "data_dir", "state_dir", "log_dir", "litestream_config"):
        p = getattr(s, name)
        if not (isinstance(p, Path) and p.is_absolute()):
            problems.append(f"{name}={p!r}")
    if not (s.replica_url.startswith("file://") or re.match(r"^s3://[^/]{3,}", s.replica_url)):
        problems.append(f"replica_url={s.replica_url!r}")
    elif s.replica_url.startswith("s3://") and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?",
                                                                s.replica_url, re.S):
        problems.append(f"replica_url.bucket={s.replica_url!r}")
    for name in ("global_db_name", "property_db_name"):
        v = getattr(s, name)
        if not (isinstance(v, str) and v and "/" not in v and not v.startswith(".")):
            problems.append(f"{name}={v!r}")
    if s.global_db_name == s.property_db_name:
        problems.append("db names equal")
    if not valid_port(s.portal.port):
        problems.append(f"portal.port={s.portal.port!r}")
    if not valid_port(s.metrics_port, low=0):
        problems.append(f"metrics_port={s.metrics_port!r}")
    if not valid_port(s.tunnel.metrics_port):
        problems.append(f"tunnel.metrics_port={s.tunnel.metrics_port!r}")
    for name in ("lag_alert_seconds", "litestream_stop_timeout"):
        if not valid_seconds(getattr(s, name)):
            problems.append(f"{name}={getattr(s, name)!r}")
    for name in ("initial_backoff", "max_backoff", "healthy_after", "crash_loop_window"):
        if not valid_seconds(getattr(s.restart, name)):
            problems.append(f"restart.{name}={getattr(s.restart, name)!r}")
    if not (isinstance(s.restart.crash_loop_failures, int) and s.restart.crash_loop_failures >= 1):
        problems.append(f"restart.crash_loop_failures={s.restart.crash_loop_failures!r}")
    if not valid_seconds(s.portal.stop_timeout):
        problems.append(f"portal.stop_timeout={s.portal.stop_timeout!r}")
    if not (isinstance(s.portal.command, tuple) and all(isinstance(c, str) for c in s.portal.command)):
        problems.append(f"portal.command={s.portal.command!r}")
    for name, kind in (("host", str),):
        if not isinstance(getattr(s.portal, name), kind):
            problems.append(f"portal.{name}={getattr(s.portal, name)!r}")
    if not isinstance(s.tunnel.enabled, bool):
        problems.append(f"tunnel.enabled={s.tunnel.enabled!r}")
    if not isinstance(s.tunnel.binary, str):
        problems.append(f"tunnel.binary={s.tunnel.binary!r}")
    if not isinstance(s.tunnel.config, Path):
        problems.append(f"tunnel.config={s.tunnel.config!r}")
    for name in ("s3_endpoint", "s3_region"):
        if not isinstance(getattr(s, name), str):
            problems.append(f"{name}={getattr(s, name)!r}")
    return problems


def unexpected_problems(s: Settings) -> list[str]:
    """Problems other than the known B7 ones."""
    return [p for p in settings_problems(s) if p.split("=")[0] not in KNOWN_ACCEPTED_INVALID]


def _load(doc: str | bytes | None, env: dict[str, str], env_file: bytes | None = None):
    with tempfile.TemporaryDirectory(prefix="props-") as home:
        if doc is not None:
            path = Path(home, "edgehost.toml")
            path.write_bytes(doc) if isinstance(doc, bytes) else path.write_text(doc)
        if env_file is not None:
            Path(home, "edgehost.env").write_bytes(env_file)
            os.chmod(Path(home, "edgehost.env"), 0o600)
        return parses_or_bad_input(load_settings, Path(home), env)


def _check_settings(s, *context):
    if s is not None and s is not KNOWN:
        assert unexpected_problems(s) == [], context


@FILES
@given(toml_docs, environments)
@example({"metrics_port": 65536}, {})  # B7
@example({"replica_url": 1}, {})  # B3
@example({}, {"EDGEHOST_REPLICA_URL": "s3://ab"})
@example({"portal": {"port": 0}}, {})
def test_settings_from_any_toml_and_environment_are_valid_or_bad_input(doc, env):
    _check_settings(_load(toml_document(doc), env), doc, env)


@FILES
@given(st.text(max_size=200))
@example('data_dir = "x"\n[portal\n')
@example("[portal]\nport = 'x'\n")
@example("portal = 5\n")
def test_settings_from_any_text_are_valid_or_bad_input(text):
    _check_settings(_load(text, {}), text)


@FILES
@given(st.binary(max_size=60), st.binary(max_size=60))
@example(b"# caf\xe9\n", b"")  # B4
def test_settings_and_env_file_from_any_bytes_are_valid_or_bad_input(toml_bytes, env_bytes):
    _check_settings(_load(toml_bytes, {}, env_file=env_bytes), toml_bytes, env_bytes)


# --- litestream.yml: generated mutations of the repo's file ---------------------------------

BASE_YML = yaml.safe_load((REPO / "litestream.yml").read_text())

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False),
                         st.sampled_from(["", "5m", "0", "1h30m", "-1s", "10x", "${EDGEHOST_DATA_DIR}", "${NOT_SET}",
                                          "$NOT_SET", "${}", "s3://bucket/path", "file:///tmp/replica", "gs://x/y",
                                          "honestcam.db", "/abs/path", "relative/path", "true"]),
                         st.text(max_size=12))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["path", "dir", "pattern", "url", "interval", "retention", "enabled", "watch", "replica",
                     "type", "typo"]) | st.text(max_size=5), inner, max_size=3), max_leaves=6)

# A location in the document: top-level keys, nested keys, db entries and their replicas.
TOP = sorted(set(BASE_YML) | {"levels", "logging", "access-key-id", "secret-access-key", "addr", "typo-key"})
DB_KEYS = ["path", "dir", "pattern", "recursive", "watch", "replica", "replicas", "typo"]
REPLICA_KEYS = ["url", "type", "path", "sync-interval", "access-key-id", "bucket", "typo"]

mutations = st.one_of(
    st.tuples(st.just("set_top"), st.sampled_from(TOP), yaml_values),
    st.tuples(st.just("del_top"), st.sampled_from(sorted(BASE_YML)), st.none()),
    st.tuples(st.just("set_nested"),
              st.tuples(st.sampled_from(["socket", "snapshot", "levels", "logging"]),
                        st.sampled_from(["enabled", "path", "interval", "retention", "level", "typo"])),
              yaml_values),
    st.tuples(st.just("set_db"), st.tuples(st.integers(0, 2), st.sampled_from(DB_KEYS)), yaml_values),
    st.tuples(st.just("del_db"), st.tuples(st.integers(0, 2), st.sampled_from(DB_KEYS)), st.none()),
    st.tuples(st.just("set_replica"), st.tuples(st.integers(0, 2), st.sampled_from(REPLICA_KEYS)), yaml_values),
    st.tuples(st.just("set_level"), st.integers(0, 2), yaml_values),
)


def mutate(doc: dict, mutation) -> dict:
    kind, where, value = mutation
    if kind == "set_top":
        doc[where] = value
    elif kind == "del_top":
        doc.pop(where, None)
    elif kind == "set_nested":
        key, sub = where
        if key == "levels":
            doc["levels"] = doc.get("levels") if isinstance(doc.get("levels"), list) else []
            doc["levels"].append({sub: value})
        elif isinstance(doc.get(key), dict):
            doc[key][sub] = value
        else:
            doc[key] = {sub: value}
    elif kind in ("set_db", "del_db", "set_replica"):
        index, key = where
        dbs = doc.get("dbs")
        if not isinstance(dbs, list):
            return doc
        while len(dbs) <= index:
            dbs.append({})
        db = dbs[index]
        if not isinstance(db, dict):
            return doc
        if kind == "set_db":
            db[key] = value
        elif kind == "del_db":
            db.pop(key, None)
        elif isinstance(db.get("replica"), dict):
            db["replica"][key] = value
        else:
            db["replica"] = {key: value}
    elif kind == "set_level":
        levels = doc.get("levels")
        if isinstance(levels, list) and levels:
            levels[where % len(levels)] = value
    return doc


def _read_config(text: str | bytes):
    with tempfile.TemporaryDirectory(prefix="props-") as home:
        path = Path(home, "litestream.yml")
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        s = load_settings(Path(home), {})
        return parses_or_bad_input(read_config, s, path)


def config_problems(cfg: LitestreamConfig) -> list[str]:
    problems = []
    if not cfg.entries:
        problems.append("no entries")
    for e in cfg.entries:
        if (e.path is None) == (e.dir is None):
            problems.append(f"entry {e.index}: path and dir")
        for p in (e.path, e.dir):
            if p is not None and not isinstance(p, Path):
                problems.append(f"entry {e.index}: {p!r}")
        if not re.match(r"^(file|s3)://", e.replica_url):
            problems.append(f"entry {e.index}: url {e.replica_url!r}")
    for name in ("snapshot_retention", "snapshot_interval", "l0_retention_check_interval", "shutdown_sync_timeout"):
        if not isinstance(getattr(cfg, name), timedelta):
            problems.append(name)
    if not all(isinstance(x, timedelta) for x in cfg.levels):
        problems.append("levels")
    if cfg.socket_path is not None and not isinstance(cfg.socket_path, Path):
        problems.append(f"socket_path={cfg.socket_path!r}")
    return problems


def test_the_repo_litestream_yml_reads():
    cfg = _read_config((REPO / "litestream.yml").read_text())
    assert cfg not in (None, KNOWN) and config_problems(cfg) == []


@FILES
@given(st.lists(mutations, min_size=1, max_size=4))
def test_litestream_yml_mutations_read_or_bad_input(muts):
    import copy

    doc = copy.deepcopy(BASE_YML)
    for m in muts:
        doc = mutate(doc, m)
    cfg = _read_config(yaml.safe_dump(doc, allow_unicode=True))
    if cfg is not None and cfg is not KNOWN:
        assert config_problems(cfg) == [], muts


@pytest.mark.parametrize("key, value", [("addr", {"\n": "${NOT_SET}"}), ("bad\nkey", 1)],
                         ids=["unset variable", "unknown key"])
def test_a_key_with_a_line_break_is_named_on_one_line(key, value):
    """Found by the mutations above: an error named the key as it is, line break and all."""
    import copy

    doc = copy.deepcopy(BASE_YML)
    doc[key] = value
    assert _read_config(yaml.safe_dump(doc)) is None  # a BadInput of one line


@FILES
@given(st.integers(0, 2000), st.text(max_size=20))
def test_litestream_yml_text_edits_read_or_bad_input(position, insert):
    base = (REPO / "litestream.yml").read_text()
    position = position % (len(base) + 1)
    cfg = _read_config(base[:position] + insert + base[position:])
    if cfg is not None and cfg is not KNOWN:
        assert config_problems(cfg) == []


@FILES
@given(st.integers(0, 2000), st.binary(max_size=8))
@example(0, b"# caf\xe9\n")  # B4
def test_litestream_yml_byte_edits_read_or_bad_input(position, insert):
    base = (REPO / "litestream.yml").read_bytes()
    position = position % (len(base) + 1)
    cfg = _read_config(base[:position] + insert + base[position:])
    if cfg is not None and cfg is not KNOWN:
        assert config_problems(cfg) == []


# --- the known bugs, one minimal reproduction each ------------------------------------------


def _yml(old: str, new: str) -> str:
    base = (REPO / "litestream.yml").read_text()
    assert old in base
    return base.replace(old, new)


def _settings_from_toml(text: str) -> Settings:
    with tempfile.TemporaryDirectory(prefix="props-") as home:
        Path(home, "edgehost.toml").write_text(text)
        return load_settings(Path(home), {})


def _env_file(data: bytes) -> Settings:
    with tempfile.TemporaryDirectory(prefix="props-") as home:
        Path(home, "edgehost.env").write_bytes(data)
        os.chmod(Path(home, "edgehost.env"), 0o600)
        return load_settings(Path(home), {})


def _yml_config(text: str | bytes):
    with tempfile.TemporaryDirectory(prefix="props-") as home:
        path = Path(home, "litestream.yml")
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return read_config(load_settings(Path(home), {}), path)


def _must_refuse(fn, *args):
    """The desired behaviour: a BadInput with a one-line message."""
    with pytest.raises(BadInput) as exc:
        fn(*args)
    one_line(exc.value)


def _must_refuse_setting(toml: str):
    _must_refuse(_settings_from_toml, toml)


SETTINGS_BUGS = [  # B3, B6, B7: fixed by the typed settings model and one-line YAML errors
    ("B3", lambda: _must_refuse_setting("replica_url = 1\n")),  # AttributeError: 'int' has no 'rstrip'
    ("B6", lambda: _must_refuse(_yml_config, "\x1f" + (REPO / "litestream.yml").read_text())),  # two-line message
    ("B6", lambda: _must_refuse(lambda: load_settings(Path("/"), {"EDGEHOST_REPLICA_URL": "gs://x\ny"}))),
    ("B6", lambda: _must_refuse(lambda: load_settings(Path("/"), {"R2_ACCOUNT_ID": "x", "R2_BUCKET": "\n"}))),
    ("B7", lambda: _must_refuse(lambda: load_settings(Path("/"), {"EDGEHOST_REPLICA_URL": "s3://my bucket/x"}))),
    ("B7", lambda: _must_refuse_setting("metrics_port = 65536\n")),  # bind() then raises OverflowError
    ("B7", lambda: _must_refuse_setting("lag_alert_seconds = nan\n")),  # NaN: never alerts
    ("B7", lambda: _must_refuse_setting("[tunnel]\nenabled = \"false\"\n")),  # a non-empty string is truthy
    ("B7", lambda: _must_refuse_setting("[restart]\nexit_on_failure = \"false\"\n")),  # bool("false") is True
    ("B7", lambda: _must_refuse_setting("[restart]\ncrash_loop_failures = 0\n")),  # first exit = crash loop
    ("B7", lambda: _must_refuse_setting("[portal]\nstop_timeout = \"soon\"\n")),  # never checked
    ("B7", lambda: _must_refuse_setting("s3_endpoint = 1\n")),  # an int where a URL belongs
]


def _load_bytes_settings(data: bytes) -> Settings:
    with tempfile.TemporaryDirectory(prefix="props-") as home:
        Path(home, "edgehost.toml").write_bytes(data)
        return load_settings(Path(home), {})


# B8: found by hand after the typed model landed: a TOML boolean read as 1, an empty path read as the
# home directory, "s3://" read as a local directory named "s3:".
SETTINGS_BUGS += [
    ("B8", lambda: _must_refuse_setting("lag_alert_seconds = true\n")),
    ("B8", lambda: _must_refuse_setting("[restart]\ncrash_loop_failures = true\n")),
    ("B8", lambda: _must_refuse_setting('data_dir = ""\n')),
    ("B8", lambda: _must_refuse_setting('replica_url = "s3://"\n')),
    ("B8", lambda: _must_refuse_setting('replica_url = "file://"\n')),
]

FIXED_BUG_REPRODUCTIONS = SETTINGS_BUGS + [
    ("B1", lambda: _must_refuse(parse_time, "-1000000d")),  # OverflowError: date value out of range
    ("B1", lambda: _must_refuse(parse_time, "0001-01-01T00:00:00+01:00")),  # OverflowError in astimezone
    ("B2", lambda: _must_refuse(parse_txid, b"2a")),  # TypeError (bytes)
    ("B4", lambda: _must_refuse(_load_bytes_settings, b"# caf\xe9\n")),  # UnicodeDecodeError
    ("B4", lambda: _must_refuse(_env_file, b"NAME=caf\xe9\n")),  # UnicodeDecodeError in dotenv
    ("B4", lambda: _must_refuse(_yml_config, (REPO / "litestream.yml").read_bytes() + b"# caf\xe9\n")),
    ("B5", lambda: _must_refuse(_yml_config, _yml("  - path: ${EDGEHOST_DATA_DIR}/${EDGEHOST_GLOBAL_DB_NAME}",
                                                  "  - path: 5"))),  # TypeError in Path()
    ("B5", lambda: _must_refuse(_yml_config, _yml("  - interval: 10m", "  - 10m"))),  # AttributeError: str.get
    ("B5", lambda: _must_refuse(_yml_config, _yml("levels:\n  - interval: 10m\n  - interval: 1h", "levels: 5"))),
    ("B5", lambda: _must_refuse(_yml_config, _yml("  path: ${EDGEHOST_LITESTREAM_SOCKET}", "  path: 5"))),
]


@pytest.mark.parametrize("bug,reproduce", FIXED_BUG_REPRODUCTIONS,
                         ids=[f"{bug}-{i}" for i, (bug, _) in enumerate(FIXED_BUG_REPRODUCTIONS)])
def test_fixed_bugs_stay_fixed(bug, reproduce):
    reproduce()
