"""The docs: the generated reference, links, the install guide against the unit, the contract's
citations, the README's layout."""

from __future__ import annotations

import re

from daemon.metrics import Metrics
from daemon.settings import load_settings
from devtools import gen_reference
from tests.deploy_common import ROOT, UNIT, _anchor, unit_directives, values
from tests.world import SERVER, TD

# --- docs -----------------------------------------------------------------------------------------


def test_reference_is_generated_from_the_code() -> None:
    committed = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == gen_reference.render(), (
        "docs/reference.md is out of date: run python -m devtools.gen_reference"
    )


def test_reference_lists_every_setting_and_metric() -> None:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    settings = load_settings(
        None,
        env={
            "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": TD,
            "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": SERVER,
        },
    ).model_dump()
    for name, value in settings.items():
        if isinstance(value, dict):
            for inner in value:
                assert f"SPIRE_KMS_RECONCILER_{name.upper()}__{inner.upper()}`" in text
        else:
            assert f"| `{name}` |" in text, name
    for family in Metrics().registry.collect():
        assert f"`{family.name}" in text, family.name


def test_docs_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/install.md", "docs/reference.md", "docs/operations.md", "docs/iam.md"):
        assert f"({doc})" in readme, doc
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            linked = (path.parent / target) if target else path
            assert linked.exists(), f"{path.name}: broken link {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{path.name}: no #{anchor}"


def test_install_doc_matches_the_unit() -> None:
    install = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    assert "/opt/spire-kms-reconciler/venv" in install
    assert "deploy/systemd/spire-kms-reconciler.service" in install
    unit = unit_directives(UNIT)
    (credential,) = values(unit, "Service", "LoadCredential")
    assert credential.split(":", 1)[1] in install


def test_docs_mention_only_real_environment_variables() -> None:
    # Every SPIRE_KMS_RECONCILER_* name the docs mention is a real setting.
    known = set(
        re.findall(r"SPIRE_KMS_RECONCILER_[A-Z_]+", (ROOT / "docs" / "reference.md").read_text())
    )
    for path in (ROOT / "docs").glob("*.md"):
        for name in re.findall(r"SPIRE_KMS_RECONCILER_[A-Z_]+", path.read_text(encoding="utf-8")):
            if name.endswith("_"):
                continue  # the prefix itself
            assert name in known, f"{path.name}: {name} is not a setting"


def test_every_cited_contract_section_exists() -> None:
    """Tests and code cite docs/contract.md as "contract §N" or "§N.M" (the M-th rule of §N)."""
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    sections: dict[str, int] = {}
    for match in re.finditer(r"^## §(\d+) .*?(?=^## |\Z)", contract, re.MULTILINE | re.DOTALL):
        sections[match[1]] = len(re.findall(r"^\d+\. ", match[0], re.MULTILINE))
    assert len(sections) >= 8
    cited: set[str] = set()
    for folder in ("daemon", "devtools", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for chunk in re.findall(r"contract (§[\d.§\-, ]+)", path.read_text(encoding="utf-8")):
                cited |= set(re.findall(r"§(\d+(?:\.\d+)?)", chunk))
    assert cited, "nothing cites the contract"
    for ref in sorted(cited):
        number, _, rule = ref.partition(".")
        assert number in sections, f"contract §{ref}: no section §{number}"
        if rule:
            assert int(rule) <= sections[number], f"contract §{ref}: §{number} has no rule {rule}"


def test_readme_layout_names_every_module_and_folder() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    names = {p.name for p in (ROOT / "daemon").glob("*.py") if not p.name.startswith("__")}
    names |= {f"{p.name}/" for p in (ROOT / "daemon").iterdir() if (p / "__init__.py").exists()}
    missing = sorted(n for n in names if n not in layout)
    assert not missing, f"README's Layout does not name {missing}"
