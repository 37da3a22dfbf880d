"""Attacks on the reclaim job (issue: reclaim that cannot be tricked), each written as the
adversary would play it, against the emulator through the AWS-faithful fault proxy.

Each attack made the daemon delete a key a live SPIRE server still used, or slice a guard into
harmless-looking pieces; the scenarios live in devtools/attacks.py, shared with
``make reliability``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import attacks
from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy
from devtools.scenarios import Harness, ScenarioOutcome
from devtools.spire_health import SpireHealth

pytestmark = pytest.mark.integration

needs_faketime = pytest.mark.skipif(
    attacks.FAKETIME is None,
    reason="libfaketime is not installed (Debian/Ubuntu: apt-get install faketime)",
)


@pytest.fixture(scope="module")
def proxy_server(emulator: Emulator) -> Iterator[FaultProxy]:
    with FaultProxy(emulator.endpoint_url, emulator=emulator, aws=True) as proxy:
        yield proxy


@pytest.fixture
def h(
    proxy_server: FaultProxy, aws: Emulator, tmp_path: Path, spire_health: SpireHealth
) -> Harness:
    proxy_server.reset()
    harness = Harness(aws, proxy_server, tmp_path, spire_health)
    harness.fresh()
    return harness


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """Some attacks run the CLI in-process."""


def holds(outcome: ScenarioOutcome) -> None:
    assert outcome.ok, outcome.explain()


@needs_faketime
def test_a_clock_stepped_back_mid_run_cannot_make_a_live_peer_look_stale(h: Harness) -> None:
    holds(attacks.clock_step(h))


def test_a_lagging_tagging_index_cannot_get_a_freshly_stamped_key_deleted(h: Harness) -> None:
    holds(attacks.stale_index(h))


def test_keys_spire_could_not_have_made_are_never_reclaimed(h: Harness) -> None:
    holds(attacks.not_spire_key(h))


@needs_faketime
def test_retries_and_peers_cannot_slice_the_budget(h: Harness) -> None:
    holds(attacks.retry_slicing(h))


def test_restored_keys_are_not_deleted_again_and_completions_obey_the_budget(
    h: Harness,
) -> None:
    holds(attacks.restored_keys(h))


def test_junk_and_pending_keys_cannot_inflate_the_share_of_servers(h: Harness) -> None:
    holds(attacks.inflated_denominator(h))


def test_our_alias_on_a_dead_peers_key_does_not_keep_it_alive(h: Harness) -> None:
    holds(attacks.alias_elsewhere(h))


def test_a_reload_turning_dry_run_on_holds_back_the_rest_of_the_run(h: Harness) -> None:
    holds(attacks.dry_run_reload(h))
