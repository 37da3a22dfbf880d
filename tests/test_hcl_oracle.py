"""The daemon's reading of server.conf against SPIRE's own HCL library (hashicorp/hcl
v1.0.1-vault-7, the version SPIRE pins), through the Go program in devtools/hcloracle: the
corpus in tests/hcl_corpus and a seeded random corpus; every difference fails the test.

Go must be on PATH (the module comes from the Go module proxy); without it the tests skip and
say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import hcl
from devtools import hcloracle
from devtools.hcloracle import Case, NoGo, ask, compare, corpus, ours
from devtools.hcloracle.fuzz import cases

CORPUS = Path(__file__).parent / "hcl_corpus"


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return hcloracle.oracle()
    except NoGo as exc:
        pytest.skip(f"the HCL oracle cannot run here: {exc}")


def _report(found: list[tuple[Case, list[str]]]) -> str:
    return "\n".join(f"{case.name}: {case.text[:200]!r}\n  " + "\n  ".join(d) for case, d in found)


def test_the_corpus_reads_the_same_in_both(binary: Path) -> None:
    seeds = list(corpus(CORPUS))
    assert len(seeds) >= 44
    found = list(compare(binary, seeds))
    assert not found, _report(found)


def test_the_corpus_holds_what_it_is_for(binary: Path) -> None:
    # the corpus exercises both outcomes and both syntaxes: SPIRE reads some, refuses others
    seeds = list(corpus(CORPUS))
    answers = ask(binary, seeds)
    read = [c.name for c, a in zip(seeds, answers, strict=True) if "stage" not in a]
    refused = [c.name for c, a in zip(seeds, answers, strict=True) if "stage" in a]
    assert any(name.endswith(".json") for name in read)
    assert len(read) >= 20 and len(refused) >= 5, (read, refused)
    # and what SPIRE reads, the daemon reads to the same region and identifier
    realistic = next(c for c in seeds if c.name == "01-realistic.conf")
    assert ours(realistic)["key_manager"]["region"] != ""


def test_a_random_corpus_reads_the_same_in_both(binary: Path) -> None:
    batch = list(cases(12, 5000, list(corpus(CORPUS))))
    answers = ask(binary, batch)
    accepted = sum("stage" not in a for a in answers)
    assert accepted >= 0.15 * len(batch), accepted  # enough valid documents to mean something
    found = list(compare(binary, batch))
    assert not found, _report(found[:10])


def test_the_harness_sees_a_difference(binary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a reader that matches keys case-sensitively must be caught
    monkeypatch.setattr(hcl.decode, "fold_equal", lambda key, name: key == name)
    found = list(compare(binary, list(corpus(CORPUS))))
    assert any(case.name == "02-case-insensitive.conf" for case, _ in found)
