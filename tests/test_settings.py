"""Tests for daemon.settings: durations, validation messages, file and environment precedence."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.settings import (
    DEFAULT_CONFIG_PATH,
    AwsSettings,
    LogSettings,
    MetricsSettings,
    ReclaimSettings,
    RefreshSettings,
    Settings,
    SettingsError,
    format_duration,
    load_settings,
    parse_duration,
    settings_warnings,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.example.toml"
P = "SPIRE_KMS_RECONCILER_"
MINIMAL_ENV = {f"{P}TRUST_DOMAIN": "example.org", f"{P}KEY_IDENTIFIER_VALUE": "server-1"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def minimal_file(tmp_path: Path, extra: str = "") -> Path:
    return write(
        tmp_path, f'trust_domain = "example.org"\nkey_identifier_value = "server-1"\n{extra}'
    )


def problems_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(path, env={} if env is None else env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(path: Path | None, env: dict[str, str] | None = None) -> str:
    problems = problems_of(path, env)
    assert len(problems) == 1, problems
    return problems[0]


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("14d", timedelta(days=14)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2h0m5s", timedelta(hours=2, seconds=5)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("  6h ", timedelta(hours=6)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        (3600, timedelta(hours=1)),
        (0, timedelta(0)),
        (1.5, timedelta(seconds=1.5)),
        # Text or number, a bare number is seconds (environment variables are always text).
        ("90", timedelta(seconds=90)),
        (" 3600 ", timedelta(hours=1)),
        ("1.5", timedelta(seconds=1.5)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_parse_duration_accepts(text: str | int | float | timedelta, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("-5m", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        (timedelta(seconds=-1), "must not be negative"),
        ("h", "invalid duration"),
        ("6x", "invalid duration"),
        ("6H", "invalid duration"),
        ("1h 30m", "invalid duration"),
        ("six hours", "invalid duration"),
        ("1e3s", "invalid duration"),
        ("30m1h", "largest first"),
        ("1m1m", "largest first"),
        ("9999999999d", "too large"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (True, "boolean"),
    ],
)
def test_parse_duration_rejects(value: str | int | float | timedelta, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(value)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(hours=6), "6h"),
        (timedelta(days=14), "14d"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=30), "30s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=2, seconds=1), "2d1s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(microseconds=1500), "0.0015s"),
        (timedelta(0), "0s"),
        (timedelta(hours=-6), "-6h"),
    ],
)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


@pytest.mark.parametrize(
    "td",
    [
        timedelta(seconds=1),
        timedelta(days=400, hours=3, minutes=2, seconds=1, milliseconds=7),
        timedelta(seconds=12.345678),
        timedelta(weeks=2),
    ],
)
def test_format_duration_round_trips(td: timedelta) -> None:
    assert parse_duration(format_duration(td)) == td


# --- defaults and sources -----------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings(None, env=MINIMAL_ENV)
    assert settings.trust_domain == "example.org"
    assert settings.key_identifier_value == "server-1"
    assert settings.key_identifier_file is None
    assert settings.region is None
    assert settings.dry_run is False
    assert settings.refresh == RefreshSettings()
    assert settings.refresh.interval == timedelta(hours=6)
    assert settings.refresh.refresh_aliases is True
    assert settings.refresh.migrate_legacy_aliases is True
    assert settings.refresh.alias_scan_interval == timedelta(hours=24)
    assert settings.refresh.jitter == 0.1
    reclaim = settings.reclaim
    assert reclaim.enabled is True
    assert reclaim.interval == timedelta(hours=48)
    assert reclaim.start_delay == timedelta(minutes=10)
    assert reclaim.stale_after == timedelta(days=14)
    assert reclaim.pending_window_days == 7
    assert reclaim.max_reclaims == 10
    assert reclaim.max_reclaim_fraction == 0.5
    assert reclaim.protect_tag == "spire-protect"
    assert reclaim.clock_skew_tolerance == timedelta(minutes=5)
    assert reclaim.jitter == 0.1
    assert settings.metrics.enabled is True
    assert settings.metrics.listen_address == "127.0.0.1:9464"
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9464)
    assert settings.log == LogSettings(format="json", level="info")
    aws = settings.aws
    assert aws.connect_timeout == timedelta(seconds=5)
    assert aws.read_timeout == timedelta(seconds=30)
    assert aws.max_attempts == 5
    assert aws.max_concurrency == 8
    assert aws.mutating_calls_per_second == 5.0
    assert aws.endpoint_url is None
    assert Path("/etc/spire-kms-reconciler/config.toml") == DEFAULT_CONFIG_PATH


def test_every_field_has_a_description() -> None:
    for model in (
        Settings,
        RefreshSettings,
        ReclaimSettings,
        MetricsSettings,
        LogSettings,
        AwsSettings,
    ):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_file_values_and_duration_forms(tmp_path: Path) -> None:
    path = minimal_file(
        tmp_path,
        '[refresh]\ninterval = 3600\nalias_scan_interval = "1h30m"\n'
        '[reclaim]\nstale_after = "7d"\nstart_delay = 0\n'
        '[aws]\nconnect_timeout = 2.5\nread_timeout = "90s"\n'
        '[log]\nlevel = "WARNING"\nformat = "Console"\n',
    )
    settings = load_settings(path, env={})
    assert settings.refresh.interval == timedelta(hours=1)
    assert settings.refresh.alias_scan_interval == timedelta(minutes=90)
    assert settings.reclaim.stale_after == timedelta(days=7)
    assert settings.reclaim.start_delay == timedelta(0)
    assert settings.aws.connect_timeout == timedelta(seconds=2.5)
    assert settings.aws.read_timeout == timedelta(seconds=90)
    assert settings.log.level == "warning"
    assert settings.log.format == "console"


def test_environment_beats_file(tmp_path: Path) -> None:
    path = minimal_file(tmp_path, '[reclaim]\nstale_after = "21d"\npending_window_days = 10\n')
    settings = load_settings(path, env={f"{P}RECLAIM__STALE_AFTER": "7d"})
    assert settings.reclaim.stale_after == timedelta(days=7)
    assert settings.reclaim.pending_window_days == 10  # the file's, not overridden


def test_file_beats_defaults_and_environment_is_case_insensitive(tmp_path: Path) -> None:
    path = minimal_file(tmp_path, "dry_run = true\n[metrics]\nlisten_address = '0.0.0.0:9100'\n")
    settings = load_settings(path, env={"spire_kms_reconciler_log__level": "Debug"})
    assert settings.dry_run is True
    assert settings.metrics.port == 9100
    assert settings.log.level == "debug"


def test_environment_alone_without_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "missing.toml", env={**MINIMAL_ENV, f"{P}DRY_RUN": "true"})
    assert settings.dry_run is True


def test_env_none_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MINIMAL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(f"{P}REGION", "eu-west-1")
    assert load_settings(None).region == "eu-west-1"


def test_explicit_env_ignores_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{P}TRUST_DOMAIN", "other.org")
    assert load_settings(None, env=MINIMAL_ENV).trust_domain == "example.org"


def test_required_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as info:
        load_settings(missing, env=MINIMAL_ENV, required_file=True)
    assert info.value.problems == [f"config file {missing} does not exist"]


def test_file_that_cannot_be_read(tmp_path: Path) -> None:
    problem = one_problem(tmp_path)  # a directory
    assert str(tmp_path) in problem
    assert "cannot read" in problem


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'trust_domain = "\xff"\n')
    assert "not UTF-8" in one_problem(path)


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'trust_domain = "example.org"\n\n[reclaim]\nstale_after 14d\n')
    problem = one_problem(path)
    assert str(path) in problem
    assert "line 4, column 13" in problem
    assert "invalid TOML" in problem


def test_toml_error_at_end_of_file_still_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'trust_domain = "example.org"\nregion = ')
    problem = one_problem(path)
    assert "line 2" in problem


# --- identifiers --------------------------------------------------------------------------------


def test_neither_identifier(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, 'trust_domain = "example.org"\n'))
    assert "requires a key identifier file or a key identifier value" in problem


def test_both_identifiers(tmp_path: Path) -> None:
    path = minimal_file(tmp_path, 'key_identifier_file = "/opt/spire/data/server/keyid"\n')
    problem = one_problem(path)
    assert "can't have a key identifier file and a key identifier value at the same time" in problem


def test_empty_environment_value_clears_the_file_identifier(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'trust_domain = "example.org"\nkey_identifier_file = "/opt/spire/keyid"\n'
    )
    env = {f"{P}KEY_IDENTIFIER_FILE": "", f"{P}KEY_IDENTIFIER_VALUE": "server-2"}
    settings = load_settings(path, env=env)
    assert settings.key_identifier_file is None
    assert settings.key_identifier_value == "server-2"


def test_identifier_file_need_not_exist(tmp_path: Path) -> None:
    path = write(
        tmp_path, f'trust_domain = "example.org"\nkey_identifier_file = "{tmp_path / "absent"}"\n'
    )
    assert load_settings(path, env={}).key_identifier_file == tmp_path / "absent"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("server@1", "may contain only"),
        ("a" * 257, "at most 256 bytes"),
        ("alias/aws/server", "must not start with 'alias/aws/'"),
        ("server 1", "may contain only"),
    ],
)
def test_bad_key_identifier_value(value: str, fragment: str) -> None:
    env = {**MINIMAL_ENV, f"{P}KEY_IDENTIFIER_VALUE": value}
    problem = one_problem(None, env)
    assert problem.startswith("key_identifier_value: ")
    assert fragment in problem


def test_longest_key_identifier_value_accepted() -> None:
    env = {**MINIMAL_ENV, f"{P}KEY_IDENTIFIER_VALUE": "a/_-" * 64}
    assert len(load_settings(None, env=env).key_identifier_value or "") == 256


@pytest.mark.parametrize(
    "trust_domain",
    [
        "Example.org",
        "spiffe://Example.org",
        "",
        "exa mple.org",
        "spiffe://example.org/",
        "http://x",
    ],
)
def test_bad_trust_domain(trust_domain: str) -> None:
    env = {**MINIMAL_ENV, f"{P}TRUST_DOMAIN": trust_domain}
    assert one_problem(None, env).startswith("trust_domain: ")


@pytest.mark.parametrize(
    "trust_domain", ["example.org", "spiffe://example.org", "spiffe://example.org/spire/server"]
)
def test_trust_domain_in_spiffe_id_form_is_read_as_go_spiffe_reads_it(trust_domain: str) -> None:
    env = {**MINIMAL_ENV, f"{P}TRUST_DOMAIN": trust_domain}
    assert load_settings(None, env=env).trust_domain == "example.org"


def test_the_old_per_run_limit_says_what_replaced_it() -> None:
    env = {**MINIMAL_ENV, f"{P}RECLAIM__MAX_RECLAIMS_PER_RUN": "10"}
    problem = one_problem(None, env)
    assert problem.startswith("reclaim.max_reclaims_per_run: renamed max_reclaims, which now "), (
        problem
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REFRESH__INTERVAL", "1ms"),
        ("REFRESH__INTERVAL", "0.5s"),
        ("RECLAIM__INTERVAL", "999ms"),
        ("REFRESH__ALIAS_SCAN_INTERVAL", "10ms"),
    ],
)
def test_intervals_are_at_least_a_second(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={**MINIMAL_ENV, f"{P}{name}": value})
    assert any("must be at least 1s" in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "value", ["99999999999d", "3661d", "1000000000000000000000s", f"{10**30}s", 10**30]
)
def test_durations_that_would_overflow_are_a_settings_problem(
    tmp_path: Path, value: str | int
) -> None:
    toml = value if isinstance(value, int) else f'"{value}"'
    for section, name in (
        ("refresh", "interval"),
        ("reclaim", "stale_after"),
        ("aws", "read_timeout"),
    ):
        path = minimal_file(tmp_path, f"[{section}]\n{name} = {toml}\n")
        problem = one_problem(path)
        assert "too large" in problem or "at most" in problem, problem


def test_short_intervals_work_but_are_warned_about() -> None:
    env = {**MINIMAL_ENV, f"{P}REFRESH__INTERVAL": "2s", f"{P}RECLAIM__STALE_AFTER": "1d"}
    warnings = settings_warnings(load_settings(None, env=env))
    assert any(w.startswith("refresh.interval is 2s, under 5m") for w in warnings), warnings
    assert settings_warnings(load_settings(None, env=MINIMAL_ENV)) == []


def test_missing_trust_domain() -> None:
    problem = one_problem(None, {f"{P}KEY_IDENTIFIER_VALUE": "server-1"})
    assert problem.startswith("trust_domain: required setting is missing")
    assert f"{P}TRUST_DOMAIN" in problem


@pytest.mark.parametrize(
    "region",
    [
        "us-east-1",
        "eu-central-1",
        "us-gov-west-1",
        "ap-southeast-5",
        "eusc-de-east-1",
        "cn-north-1",
    ],
)
def test_good_region(region: str) -> None:
    assert load_settings(None, env={**MINIMAL_ENV, f"{P}REGION": region}).region == region


@pytest.mark.parametrize(
    "region", ["US-EAST-1", "useast1", "us-east", "us_east_1", "abcde-east-1", "u-east-1"]
)
def test_bad_region(region: str) -> None:
    assert one_problem(None, {**MINIMAL_ENV, f"{P}REGION": region}).startswith("region: ")


# --- reclaim safety limits ----------------------------------------------------------------------


@pytest.mark.parametrize("days", [7, 30])
def test_pending_window_days_accepted(tmp_path: Path, days: int) -> None:
    path = minimal_file(tmp_path, f"[reclaim]\npending_window_days = {days}\n")
    assert load_settings(path, env={}).reclaim.pending_window_days == days


@pytest.mark.parametrize("days", [6, 31])
def test_pending_window_days_rejected(tmp_path: Path, days: int) -> None:
    path = minimal_file(tmp_path, f"[reclaim]\npending_window_days = {days}\n")
    problem = one_problem(path)
    assert problem.startswith("reclaim.pending_window_days: must be between 7 and 30")
    assert f"got {days}" in problem


@pytest.mark.parametrize("stale_after", ["23h", "12h", "1h", "0s"])
def test_stale_after_below_floor(stale_after: str) -> None:
    env = {**MINIMAL_ENV, f"{P}RECLAIM__STALE_AFTER": stale_after}
    problem = one_problem(None, env)
    assert problem.startswith("reclaim.stale_after: must be at least 1d")
    assert f"{P}RECLAIM__STALE_AFTER" in problem  # says where the value came from


def test_stale_after_at_floor_accepted() -> None:
    env = {**MINIMAL_ENV, f"{P}RECLAIM__STALE_AFTER": "1d"}
    assert load_settings(None, env=env).reclaim.stale_after == timedelta(days=1)


def test_stale_after_must_exceed_twice_refresh_interval(tmp_path: Path) -> None:
    path = minimal_file(
        tmp_path,
        '[refresh]\ninterval = "7d"\nalias_scan_interval = "7d"\n[reclaim]\nstale_after = "14d"\n',
    )
    problem = one_problem(path)
    assert problem.startswith("reclaim.stale_after: must be more than twice refresh.interval")


def test_alias_scan_interval_must_not_be_shorter_than_interval() -> None:
    env = {**MINIMAL_ENV, f"{P}REFRESH__INTERVAL": "48h"}
    problem = one_problem(None, env)
    assert problem.startswith("refresh.alias_scan_interval: must be at least refresh.interval (2d)")


@pytest.mark.parametrize(
    ("key", "value", "prefix"),
    [
        ("max_reclaims", "-1", "reclaim.max_reclaims: must be 0 or more"),
        ("max_reclaim_fraction", "0", "reclaim.max_reclaim_fraction: must be above 0"),
        ("max_reclaim_fraction", "1.01", "reclaim.max_reclaim_fraction: must be above 0"),
        ("protect_tag", "", "reclaim.protect_tag: must be 1 to 128"),
        ("protect_tag", "x" * 129, "reclaim.protect_tag: must be 1 to 128"),
        ("protect_tag", "aws:protect", "reclaim.protect_tag: must not start with 'aws:'"),
        ("protect_tag", "spire-active", "reclaim.protect_tag: must not be one of SPIRE's own tags"),
        ("clock_skew_tolerance", "0s", "reclaim.clock_skew_tolerance: must be above 0"),
        (
            "clock_skew_tolerance",
            "61m",
            "reclaim.clock_skew_tolerance: must be above 0 and at most 1h",
        ),
        ("jitter", "0.6", "reclaim.jitter: must be between 0 and 0.5"),
        ("interval", "0s", "reclaim.interval: must be at least 1s"),
        ("interval", "soon", "reclaim.interval: invalid duration 'soon'"),
    ],
)
def test_reclaim_limits(key: str, value: str, prefix: str) -> None:
    env = {**MINIMAL_ENV, f"{P}RECLAIM__{key.upper()}": value}
    assert one_problem(None, env).startswith(prefix)


def test_reclaim_limit_edges_accepted() -> None:
    env = {
        **MINIMAL_ENV,
        f"{P}RECLAIM__MAX_RECLAIMS": "0",
        f"{P}RECLAIM__MAX_RECLAIM_FRACTION": "1",
        f"{P}RECLAIM__CLOCK_SKEW_TOLERANCE": "1h",
        f"{P}RECLAIM__JITTER": "0",
        f"{P}RECLAIM__PROTECT_TAG": "team:keep-this key",
    }
    reclaim = load_settings(None, env=env).reclaim
    assert reclaim.max_reclaims == 0
    assert reclaim.max_reclaim_fraction == 1.0
    assert reclaim.clock_skew_tolerance == timedelta(hours=1)
    assert reclaim.protect_tag == "team:keep-this key"


def test_boolean_where_a_number_belongs(tmp_path: Path) -> None:
    path = minimal_file(tmp_path, "[reclaim]\nmax_reclaims = true\n")
    assert one_problem(path).startswith("reclaim.max_reclaims: expected a number")


# --- other sections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("[::1]:9464", "::1", 9464),
        ("[::]:0", "::", 0),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_listen_address(address: str, host: str, port: int) -> None:
    metrics = MetricsSettings(listen_address=address)
    assert (metrics.host, metrics.port) == (host, port)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", ":9464", "::1:9464", "[::1]9464", "[nothost]:1", "h:65536", "h:-1", "h:x"],
)
def test_bad_listen_address(address: str) -> None:
    env = {**MINIMAL_ENV, f"{P}METRICS__LISTEN_ADDRESS": address}
    assert one_problem(None, env).startswith("metrics.listen_address: ")


def test_bad_log_level() -> None:
    problem = one_problem(None, {**MINIMAL_ENV, f"{P}LOG__LEVEL": "verbose"})
    assert problem.startswith("log.level: ")
    assert "'debug'" in problem  # says what is allowed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_attempts", "0"),
        ("max_attempts", "21"),
        ("max_concurrency", "0"),
        ("max_concurrency", "65"),
        ("mutating_calls_per_second", "0"),
        ("mutating_calls_per_second", "51"),
        ("connect_timeout", "0s"),
        ("read_timeout", "-1s"),
        ("endpoint_url", "localhost:5000"),
    ],
)
def test_aws_limits(key: str, value: str) -> None:
    env = {**MINIMAL_ENV, f"{P}AWS__{key.upper()}": value}
    assert one_problem(None, env).startswith(f"aws.{key}: ")


def test_endpoint_url_is_not_echoed() -> None:
    env = {**MINIMAL_ENV, f"{P}AWS__ENDPOINT_URL": "ftp://user:secret@host"}
    assert "secret" not in one_problem(None, env)


def test_aws_edges_accepted() -> None:
    env = {
        **MINIMAL_ENV,
        f"{P}AWS__MAX_ATTEMPTS": "1",
        f"{P}AWS__MAX_CONCURRENCY": "64",
        f"{P}AWS__MUTATING_CALLS_PER_SECOND": "50",
        f"{P}AWS__ENDPOINT_URL": "http://127.0.0.1:5000",
    }
    aws = load_settings(None, env=env).aws
    assert (aws.max_attempts, aws.max_concurrency, aws.mutating_calls_per_second) == (1, 64, 50.0)
    assert aws.endpoint_url == "http://127.0.0.1:5000"


# --- unknown keys and many problems -------------------------------------------------------------


def test_unknown_key_in_file(tmp_path: Path) -> None:
    problem = one_problem(minimal_file(tmp_path, "[reclaim]\nstale_afterr = '14d'\n"))
    assert problem.startswith("reclaim.stale_afterr: unknown setting")
    assert "stale_after" in problem.partition("known here:")[2]


def test_unknown_top_level_key_and_table_in_file(tmp_path: Path) -> None:
    problems = problems_of(minimal_file(tmp_path, "dryrun = true\n[reclaimer]\nenabled = false\n"))
    assert sorted(p.split(":")[0] for p in problems) == ["dryrun", "reclaimer"]


def test_unknown_environment_variable() -> None:
    # A single underscore where two belong must not be silently ignored.
    problem = one_problem(None, {**MINIMAL_ENV, f"{P}RECLAIM_STALE_AFTER": "7d"})
    assert problem.startswith(f"{P}RECLAIM_STALE_AFTER: unknown setting")


def test_unknown_nested_environment_variable() -> None:
    problem = one_problem(None, {**MINIMAL_ENV, f"{P}RECLAIM__STALE": "7d"})
    assert problem.startswith("reclaim.stale: unknown setting")


def test_section_from_environment_as_json() -> None:
    env = {**MINIMAL_ENV, f"{P}LOG": '{"level": "debug"}'}
    assert load_settings(None, env=env).log.level == "debug"


def test_section_from_environment_not_json() -> None:
    problem = one_problem(None, {**MINIMAL_ENV, f"{P}LOG": "debug"})
    assert problem.startswith(f"{P}LOG: not a JSON object for the [log] table")


def test_several_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'trust_domain = "Example.ORG"\n'
        'key_identifier_file = "/opt/spire/data/server/keyid"\n'
        'key_identifier_value = "server-1"\n'
        "bogus = 1\n"
        '[refresh]\ninterval = "6hours"\n'
        '[reclaim]\npending_window_days = 31\nstale_after = "2h"\nmax_reclaim_fraction = 2\n'
        '[log]\nlevel = "loud"\n',
    )
    problems = problems_of(path, {f"{P}AWS__MAX_ATTEMPTS": "0", f"{P}TYPO": "1"})
    names = sorted(problem.split(": ")[0] for problem in problems)
    assert names == sorted(
        [
            f"{P}TYPO",
            "trust_domain",
            "key_identifier_file/key_identifier_value",
            "bogus",
            "refresh.interval",
            "reclaim.pending_window_days",
            "reclaim.stale_after",
            "reclaim.max_reclaim_fraction",
            "log.level",
            "aws.max_attempts",
        ]
    ), problems
    text = "\n".join(problems)
    assert "can't have a key identifier file and a key identifier value" in text
    assert "'6hours'" in text  # the rejected value is shown


def test_settings_error_joins_problems() -> None:
    error = SettingsError(["a: one", "b: two"])
    assert error.problems == ["a: one", "b: two"]
    assert str(error) == "a: one\nb: two"
    assert SettingsError("only").problems == ["only"]


# --- the example configuration ------------------------------------------------------------------


_SPIRE_CONF = """\
server {
  trust_domain = "example.org"
  data_dir = "/opt/spire/data/server"
}
plugins {
  KeyManager "aws_kms" {
    plugin_data {
      region = "us-east-1"
      key_identifier_file = "/opt/spire/data/server/keyid"
    }
  }
}
health_checks {
  listener_enabled = true
  bind_address = "0.0.0.0"
  bind_port = "8080"
}
"""


def test_example_config_loads_and_defers_to_spire(tmp_path: Path) -> None:
    # The example reads SPIRE's server.conf; point it at one in tmp_path.
    conf = tmp_path / "server.conf"
    conf.write_text(_SPIRE_CONF)
    env = {"SPIRE_KMS_RECONCILER_SPIRE_SERVER_CONFIG": str(conf)}
    settings = load_settings(EXAMPLE_CONFIG, env=env, required_file=True)
    assert settings.trust_domain == "example.org"
    assert settings.region == "us-east-1"
    assert settings.key_identifier_file == Path("/opt/spire/data/server/keyid")
    assert settings.key_identifier_value is None
    assert settings.spire_health_url == "http://127.0.0.1:8080/live"
    assert settings.assume_spire_alive is False
    defaults = load_settings(None, env={**MINIMAL_ENV})
    for section in ("refresh", "reclaim", "metrics", "log", "aws"):
        assert getattr(settings, section) == getattr(defaults, section), section
    # Nothing in the example overrides a value SPIRE's server.conf gives.
    data = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    shared = {"trust_domain", "region", "key_identifier_file", "key_identifier_value"}
    assert not shared & set(data), shared & set(data)
    assert "spire_health_url" not in data


def test_example_config_documents_every_setting() -> None:
    data = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert name in data or f"# {name} =" in text, name
    for section, model in (
        ("refresh", RefreshSettings),
        ("reclaim", ReclaimSettings),
        ("metrics", MetricsSettings),
        ("log", LogSettings),
        ("aws", AwsSettings),
    ):
        for name in model.model_fields:
            assert name in data[section] or f"# {name} =" in text, f"{section}.{name}"


def test_json_dump_renders_durations_readably() -> None:
    dumped = load_settings(None, env=MINIMAL_ENV).model_dump(mode="json")
    assert dumped["reclaim"]["stale_after"] == "14d"
    assert dumped["refresh"]["interval"] == "6h"
    schema = Settings.model_json_schema()
    assert schema["$defs"]["ReclaimSettings"]["properties"]["stale_after"]["default"] == "14d"


# --- SPIRE's server.conf (spire_server_config; more in tests/test_spire_config.py) -------------


def test_spire_server_config_is_unset_by_default() -> None:
    assert load_settings(None, env=MINIMAL_ENV).spire_server_config is None


def test_spire_server_config_from_the_environment_is_a_known_setting(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text(
        'server { trust_domain = "example.org" }\n'
        'plugins { KeyManager "aws_kms" { plugin_data { region = "us-east-1" } } }\n',
        encoding="utf-8",
    )
    settings = load_settings(None, env={**MINIMAL_ENV, f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert settings.spire_server_config == conf
    assert settings.region == "us-east-1"
    assert settings.key_identifier_value == "server-1"


def test_missing_spire_server_config_is_reported(tmp_path: Path) -> None:
    problem = one_problem(
        minimal_file(tmp_path, f'spire_server_config = "{tmp_path / "absent.conf"}"\n')
    )
    assert problem == (
        f"spire_server_config {tmp_path / 'absent.conf'}: cannot read it: No such file or directory"
    )


def test_a_bare_number_means_seconds_in_the_file_and_in_the_environment(tmp_path: Path) -> None:
    path = minimal_file(tmp_path, "[refresh]\ninterval = 3600\n")
    from_file = load_settings(path, env={})
    from_env = load_settings(
        minimal_file(tmp_path, ""), env={"SPIRE_KMS_RECONCILER_REFRESH__INTERVAL": "3600"}
    )
    assert from_file.refresh.interval == from_env.refresh.interval == timedelta(hours=1)
