"""The command line: settings problems, the key identifier file, argument order, permissions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.emulator import Emulator
from devtools.faultproxy import DEFAULT_PRINCIPAL, FaultProxy
from tests.cli_runs import run, write_config
from tests.world import SERVER, TD

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """Every test here runs the CLI in-process."""


# ------------------------------------------------------------------ settings and identity


def test_bad_settings_exit_2_listing_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, body="[reclaim]\npending_window_days = 3\nmax_reclaim_fraction = 2.0\n"
    )

    code, out, err = run(capsys, "once", "--config", str(config))

    assert code == 2
    assert "reclaim.pending_window_days" in err
    assert "reclaim.max_reclaim_fraction" in err
    assert out == ""


def test_bad_top_level_and_nested_settings_are_listed_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'trust_domain = "Not A Domain"\nkey_identifier_value = "x"\n[refresh]\ninterval = "soon"\n'
    )

    code, _, err = run(capsys, "check", "--config", str(config))

    assert code == 2
    assert "trust_domain" in err
    assert "refresh.interval" in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"

    code, _, err = run(capsys, "check", "--config", str(missing))

    assert code == 2
    assert str(missing) in err


def test_missing_key_identifier_file_exits_2_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, keyid_content=None)
    keyid = tmp_path / "keyid"

    code, out, err = run(capsys, "once", "--config", str(config))

    assert code == 2
    assert str(keyid) in err
    assert "does not exist" in err
    assert not keyid.exists()
    assert out == ""


def test_key_identifier_file_that_is_not_a_uuid_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, keyid_content="not-a-uuid")

    code, _, err = run(capsys, "check", "--config", str(config))

    assert code == 2
    assert "not a UUID" in err


def test_trailing_newline_in_key_identifier_file_is_refused_as_spire_refuses_it(
    aws: Emulator, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPIRE parses the file's whole content as a UUID and does not start with a trailing
    newline: the daemon must not keep that server's keys alive meanwhile."""
    config = write_config(tmp_path, endpoint=proxy.endpoint_url, keyid_content=SERVER + "\n")

    code, out, err = run(capsys, "check", "--config", str(config))

    assert code == 2, out + err
    assert "does not start with this file either" in err
    assert "printf '%s'" in err
    assert proxy.count() == 0  # nothing asked of AWS with a server ID SPIRE would not use


def test_key_identifier_file_uuid_is_rendered_lowercase(
    aws: Emulator, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, endpoint=proxy.endpoint_url, keyid_content=SERVER.upper())

    code, out, err = run(capsys, "check", "--config", str(config))

    assert code == 0, out + err
    assert f"server ID {SERVER})" in out


@pytest.mark.parametrize("before", [True, False], ids=["config-first", "config-after"])
def test_config_is_accepted_before_and_after_the_subcommand(
    aws: Emulator,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    before: bool,
) -> None:
    config = str(write_config(tmp_path, endpoint=proxy.endpoint_url))
    argv = ["--config", config, "keys"] if before else ["keys", "--config", config]

    code, out, err = run(capsys, *argv)

    assert code == 0, out + err
    assert "0 keys" in out


def test_environment_overrides_the_file(
    aws: Emulator,
    proxy: FaultProxy,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPIRE_KMS_RECONCILER_RECLAIM__PENDING_WINDOW_DAYS", "99")

    code, _, err = run(capsys, "check", "--config", str(config))

    assert code == 2
    assert "reclaim.pending_window_days" in err
    assert "SPIRE_KMS_RECONCILER_RECLAIM__PENDING_WINDOW_DAYS" in err


# ------------------------------------------------------------------ permissions


def assert_explains_get_resources(text: str) -> None:
    assert "tag:GetResources" in text
    assert "identity-based" in text
    assert "key policy" in text
    assert DEFAULT_PRINCIPAL in text


def test_get_resources_denied_exits_3_with_an_explanation(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1)
    proxy.deny("GetResources")

    code, out, err = run(capsys, "once", "--config", str(config))

    assert code == 3, out + err
    assert_explains_get_resources(out)
    for op in ("TagResource", "TagResources", "UpdateAlias", "ScheduleKeyDeletion"):
        assert proxy.count(op) == 0, op


def test_keys_with_get_resources_denied_exits_3(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy.deny("GetResources")

    code, out, err = run(capsys, "keys", "--output", "json", "--config", str(config))

    assert code == 3
    assert out == ""
    assert_explains_get_resources(err)


def test_check_passes_against_the_emulator(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = datetime.now(UTC) - timedelta(days=30)
    aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1, created_at=old)

    code, out, err = run(capsys, "check", "--config", str(config))

    assert code == 0, out + err
    assert "settings: ok" in out
    assert proxy.count("GetResources") >= 1
    assert proxy.count("DescribeKey") >= 1
    assert proxy.count("ListAliases") >= 1
    for op in ("TagResource", "TagResources", "UpdateAlias", "ScheduleKeyDeletion"):
        assert proxy.count(op) == 0, op


@pytest.mark.parametrize(
    ("fault", "exit_code", "shown"),
    [("deny", 3, "DENIED"), ("server_error", 1, "InternalFailure")],
)
def test_check_exit_code_tells_a_denied_permission_from_another_failure(
    aws: Emulator,
    proxy: FaultProxy,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    exit_code: int,
    shown: str,
) -> None:
    getattr(proxy, fault)("GetResources")

    code, out, err = run(capsys, "check", "--config", str(config))

    assert code == exit_code, out + err
    assert shown in out
    if fault == "deny":
        assert_explains_get_resources(out)


def test_check_warns_about_intervals_under_five_minutes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], aws: Emulator
) -> None:
    config = write_config(
        tmp_path,
        endpoint=aws.endpoint_url,
        body='[refresh]\ninterval = "1s"\nalias_scan_interval = "1s"\n'
        '[reclaim]\nstale_after = "1d"\n',
    )
    code, out, _ = run(capsys, "check", "--config", str(config))
    assert code == 0, out
    assert "settings: warning: refresh.interval is 1s, under 5m" in out
    assert "settings: warning: assume_spire_alive is true" in out
