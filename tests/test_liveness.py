"""A keep-alive that means alive (contract §4): the SPIRE health probe and what the refresh job does
with its answer.

The probe is exercised against a stand-in SPIRE health listener (devtools/spire_health.py) over
real HTTP. The jobs are exercised through the real CLI against the emulator, behind the fault
proxy, which counts every call: a SPIRE server that is not alive must cost no mutating call.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon import spire
from daemon.cli import main
from daemon.liveness import probe
from daemon.model import ProbeFailure
from daemon.settings import SettingsError, load_settings
from devtools.emulator import Emulator, free_port
from devtools.faultproxy import MUTATING, FaultProxy
from devtools.spire_health import SpireHealth
from tests.world import DAY, PEER, SERVER, TD, ago, tag_only_key


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """The CLI runs in-process here."""


# --- the probe ---------------------------------------------------------------------------------


async def test_alive_is_a_2xx_answer(spire_health: SpireHealth) -> None:
    found = await probe(spire_health.url)
    assert found.alive
    assert found.status == 200
    assert found.failure is None
    assert found.url == spire_health.url
    assert found.detail.startswith(f"HTTP 200 from {spire_health.url}")


@pytest.mark.parametrize(
    ("state", "failure", "status"),
    [
        ("dead", ProbeFailure.HTTP_STATUS, 500),
        ("unavailable", ProbeFailure.HTTP_STATUS, 503),
        ("closed", ProbeFailure.CONNECTION_REFUSED, None),
        ("hang", ProbeFailure.TIMEOUT, None),
    ],
)
async def test_every_other_answer_is_not_alive_and_says_why(
    spire_health: SpireHealth, state: str, failure: ProbeFailure, status: int | None
) -> None:
    spire_health.set(state)
    found = await probe(spire_health.url, 0.5)
    assert not found.alive
    assert found.failure is failure
    assert found.status == status
    if state == "dead":  # SPIRE's own body says what is not live
        assert "subsystem is not live" in found.detail


async def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    found = await probe("http://spire-server.invalid:8080/live", 2)
    assert not found.alive
    assert found.failure is ProbeFailure.UNREACHABLE
    assert "spire-server.invalid" in found.detail


class _Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/live"
    server.shutdown()
    server.server_close()


async def test_a_redirect_is_not_followed_and_not_alive(redirecting: str) -> None:
    found = await probe(redirecting, 2)
    assert not found.alive
    assert (found.failure, found.status) == (ProbeFailure.HTTP_STATUS, 302)


async def test_an_http_proxy_in_the_environment_is_not_used(
    spire_health: SpireHealth, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HTTP(S)_PROXY is for AWS; a proxy that does not exist would otherwise fail the probe.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    assert (await probe(spire_health.url)).alive


@pytest.mark.parametrize("timeout", ["6s", "0s", "1m"])
def test_the_probe_waits_at_most_five_seconds(timeout: str) -> None:
    env = {
        "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": TD,
        "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": SERVER,
        "SPIRE_KMS_RECONCILER_SPIRE_HEALTH_TIMEOUT": timeout,
    }
    with pytest.raises(SettingsError) as info:
        load_settings(None, env=env)
    assert info.value.problems[0].startswith("spire_health_timeout: must be above 0 and at most 5s")


# --- the jobs, through the CLI -----------------------------------------------------------------


class Run:
    """One CLI run against the proxy, with settings written to a file."""

    def __init__(self, tmp: Path, proxy: FaultProxy, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp
        self.proxy = proxy
        self.capsys = capsys
        self.out = self.err = ""

    def config(self, lines: str, *, identity: bool = True) -> Path:
        keyid = self.tmp / "keyid"
        keyid.write_text(SERVER)
        path = self.tmp / "config.toml"
        head = (
            f'trust_domain = "{TD}"\nregion = "us-east-1"\nkey_identifier_file = "{keyid}"\n'
            if identity
            else ""
        )
        path.write_text(
            head
            + lines
            + f'\n[aws]\nendpoint_url = "{self.proxy.endpoint_url}"\nmax_attempts = 2\n'
            'read_timeout = "5s"\nmutating_calls_per_second = 50\n'
            '[log]\nformat = "json"\n'
        )
        return path

    def __call__(self, config: Path, *args: str) -> int:
        self.capsys.readouterr()
        code = main([*args, "--config", str(config)])
        self.out, self.err = self.capsys.readouterr()
        return int(code)


@pytest.fixture
def run(tmp_path: Path, proxy: FaultProxy, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, proxy, capsys)


def seed(aws: Emulator) -> tuple[str, str]:
    """This server's key (refreshed a day ago) and a dead peer's (twenty days stale)."""
    own = aws.spire_key(TD, SERVER, "x509-CA-A", last_update=ago(DAY))
    dead = tag_only_key(aws, PEER, "x509-CA-A", 20)
    return own, dead


def test_a_live_spire_server_gets_its_keys_stamped(
    aws: Emulator, proxy: FaultProxy, run: Run, spire_health: SpireHealth
) -> None:
    own, _ = seed(aws)
    config = run.config(f'spire_health_url = "{spire_health.url}"')
    assert run(config, "once", "--job", "refresh") == 0, run.out + run.err
    assert int(aws.tags(own)[spire.TAG_LAST_UPDATE]) >= ago(timedelta(minutes=5))
    assert proxy.count("TagResources") == 1 and proxy.count("UpdateAlias") == 1
    assert spire_health.requests == 2  # before the reads, and again right before the writes
    assert "SPIRE server alive: HTTP 200" in run.out


@pytest.mark.parametrize("state", ["dead", "unavailable", "closed", "hang"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_a_spire_server_that_is_not_alive_gets_no_write_at_all(
    aws: Emulator,
    proxy: FaultProxy,
    run: Run,
    spire_health: SpireHealth,
    state: str,
    dry_run: bool,
) -> None:
    own, _ = seed(aws)
    before = aws.tags(own)
    spire_health.set(state)
    config = run.config(f'spire_health_url = "{spire_health.url}"\nspire_health_timeout = "1s"')
    args = ["once", "--job", "refresh", *(["--dry-run"] if dry_run else [])]
    assert run(config, *args) == 4, run.out + run.err
    assert proxy.count(MUTATING) == 0
    assert proxy.count() == 0  # not even a read: a dead SPIRE server costs no AWS call
    assert aws.tags(own) == before
    assert "REFUSED by the spire_not_alive guard: the SPIRE server is not alive" in run.out
    failure = {"dead": "HTTP 500", "unavailable": "HTTP 503", "closed": "connection refused",
               "hang": "no answer"}[state]  # fmt: skip
    assert failure in run.out
    # The log says it once, not once per key.
    assert run.err.count('"event": "spire_not_alive"') == 1


def test_spire_dying_during_the_reads_stops_the_writes(
    aws: Emulator, proxy: FaultProxy, run: Run, spire_health: SpireHealth
) -> None:
    """The second probe, right before the first write, sees what the first could not."""
    own, _ = seed(aws)
    before = aws.tags(own)
    proxy.before("DescribeKey", lambda _: spire_health.set("closed"), times=1)
    config = run.config(f'spire_health_url = "{spire_health.url}"')
    assert run(config, "once", "--job", "refresh") == 4, run.out + run.err
    assert proxy.count("GetResources") >= 1  # the reads went ahead
    assert proxy.count(MUTATING) == 0
    assert aws.tags(own) == before
    assert "would have made: refresh_alias 1, stamp 1" in run.out


def test_reclaim_does_not_depend_on_the_probe(
    aws: Emulator, proxy: FaultProxy, run: Run, spire_health: SpireHealth
) -> None:
    _, dead = seed(aws)
    spire_health.set("closed")
    config = run.config(
        f'spire_health_url = "{spire_health.url}"\n[reclaim]\nmax_reclaim_fraction = 1.0'
    )
    assert run(config, "once", "--job", "reclaim") == 0, run.out + run.err
    assert aws.key_state(dead) == "PendingDeletion"
    assert spire_health.requests == 0


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("once",), 2),
        (("once", "--job", "refresh"), 2),
        (("once", "--job", "all", "--dry-run"), 2),
        (("run",), 2),
        (("once", "--job", "reclaim"), 0),
        (("keys",), 0),
        (("check",), 0),
    ],
)
def test_without_a_health_url_or_assume_spire_alive_stamping_commands_refuse_to_start(
    aws: Emulator, proxy: FaultProxy, run: Run, args: tuple[str, ...], code: int
) -> None:
    seed(aws)
    config = run.config("")
    assert run(config, *args) == code, run.out + run.err
    if code == 2:
        assert "set spire_health_url" in run.err
        assert "assume_spire_alive = true" in run.err
        assert proxy.count() == 0
    if args == ("check",):
        assert "spire server: not configured" in run.out


def test_assume_spire_alive_stamps_without_a_probe_and_check_says_it_is_unsafe(
    aws: Emulator, proxy: FaultProxy, run: Run
) -> None:
    own, _ = seed(aws)
    config = run.config("assume_spire_alive = true")
    assert run(config, "once", "--job", "refresh") == 0, run.out + run.err
    assert int(aws.tags(own)[spire.TAG_LAST_UPDATE]) >= ago(timedelta(minutes=5))
    assert run(config, "check") == 0
    assert "not probed: assume_spire_alive = true (unsafe" in run.out


def test_check_reports_a_spire_server_that_is_not_alive(
    aws: Emulator, proxy: FaultProxy, run: Run, spire_health: SpireHealth
) -> None:
    seed(aws)
    config = run.config(f'spire_health_url = "{spire_health.url}"')
    assert run(config, "check") == 0
    assert f"spire server: alive (HTTP 200 from {spire_health.url}" in run.out
    spire_health.set("dead")
    assert run(config, "check") == 0  # permissions are what check's exit code is about
    assert "spire server: NOT ALIVE (HTTP 500" in run.out


def test_assume_spire_alive_with_a_health_url_is_bad_configuration(
    aws: Emulator, proxy: FaultProxy, run: Run, spire_health: SpireHealth
) -> None:
    config = run.config(f'spire_health_url = "{spire_health.url}"\nassume_spire_alive = true')
    assert run(config, "once") == 2
    assert "assume_spire_alive: cannot be true while a spire_health_url is set" in run.err


def spire_conf(tmp: Path, port: int, *, td: str = TD, region: str = "us-east-1") -> Path:
    keyid = tmp / "keyid"
    keyid.write_text(SERVER)
    path = tmp / "server.conf"
    path.write_text(
        f'server {{\n  trust_domain = "{td}"\n  data_dir = "{tmp}"\n}}\n'
        'plugins {\n  KeyManager "aws_kms" {\n    plugin_data {\n'
        f'      region = "{region}"\n      key_identifier_file = "{keyid}"\n'
        "    }\n  }\n}\n"
        "health_checks {\n  listener_enabled = true\n"
        f'  bind_address = "127.0.0.1"\n  bind_port = "{port}"\n}}\n'
    )
    return path


def test_the_health_url_comes_from_spires_health_checks_block(
    aws: Emulator, proxy: FaultProxy, run: Run, spire_health: SpireHealth
) -> None:
    own, _ = seed(aws)
    conf = spire_conf(run.tmp, spire_health.port)
    config = run.config(f'spire_server_config = "{conf}"', identity=False)
    assert run(config, "once", "--job", "refresh") == 0, run.out + run.err
    assert int(aws.tags(own)[spire.TAG_LAST_UPDATE]) >= ago(timedelta(minutes=5))
    assert spire_health.requests == 2
    spire_health.set("dead")
    assert run(config, "once", "--job", "refresh") == 4
    assert f"HTTP 500 from http://127.0.0.1:{spire_health.port}/live" in run.out


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ('trust_domain = "other.example.org"', "trust_domain: 'other.example.org' disagrees"),
        ('region = "eu-west-1"', "region: 'eu-west-1' disagrees"),
        ('key_identifier_value = "spire-1"', "key_identifier_value: 'spire-1' names another"),
    ],
    ids=["trust-domain", "region", "key-identifier"],
)
def test_settings_that_disagree_with_spires_exit_2(
    aws: Emulator,
    proxy: FaultProxy,
    run: Run,
    spire_health: SpireHealth,
    override: str,
    where: str,
) -> None:
    conf = spire_conf(run.tmp, spire_health.port)
    config = run.config(f'spire_server_config = "{conf}"\n{override}', identity=False)
    assert run(config, "once") == 2
    assert where in run.err
    assert proxy.count() == 0


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("trust_domain", "other.example.org"),
        ("key_identifier_value", "f0f0f0f0-1111-4222-8333-444455556666"),
        ("region", "us-west-2"),
    ],
    ids=["trust-domain", "server-id", "region"],
)
def test_a_refresh_that_finds_no_key_fails_and_says_where_it_looked(
    aws: Emulator,
    proxy: FaultProxy,
    run: Run,
    spire_health: SpireHealth,
    setting: str,
    value: str,
) -> None:
    seed(aws)  # the keys are in example.org, this server, us-east-1
    lines = {
        "trust_domain": TD,
        "region": "us-east-1",
        "key_identifier_value": SERVER,
        setting: value,
    }
    body = "".join(f'{k} = "{v}"\n' for k, v in lines.items())
    config = run.config(body + f'spire_health_url = "{spire_health.url}"', identity=False)
    assert run(config, "once", "--job", "refresh") == 1, run.out + run.err
    assert "FAILED: no key of this server found" in run.out
    assert f"trust domain {lines['trust_domain']}" in run.out
    assert f"server ID {lines['key_identifier_value']}" in run.out
    assert f"region {lines['region']}" in run.out
    assert f"endpoint {proxy.endpoint_url}" in run.out
    assert proxy.count(MUTATING) == 0
