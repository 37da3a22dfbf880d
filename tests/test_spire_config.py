"""Tests for daemon.spire_config (SPIRE's server.conf) and its use by load_settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.settings import SettingsError, load_settings
from daemon.spire_config import (
    Attribute,
    Block,
    Body,
    SpireConfigError,
    parse_hcl,
    read_spire_server_config,
)

P = "SPIRE_KMS_RECONCILER_"

# A realistic SPIRE server configuration: comments of every kind, nested blocks, objects, lists,
# heredocs, other plugins, and the aws_kms KeyManager in tag-based mode.
SERVER_CONF = """\
# SPIRE server configuration (managed by config management)
server {
    bind_address = "0.0.0.0"
    bind_port = "8081"
    socket_path = "/tmp/spire-server/private/api.sock"
    trust_domain = "example.org"   // the SPIFFE trust domain
    data_dir = "/opt/spire/data/server"
    log_level = "INFO"
    log_format = "json"
    ca_key_type = "ec-p256"
    ca_ttl = "168h"
    default_x509_svid_ttl = "1h"
    jwt_issuer = "https://oidc.example.org"
    ca_subject = {
        country = ["US"],
        organization = ["SPIFFE", "Example, Inc."],
        common_name = "",
    }
    /* Federation is configured but
       not used by every deployment. */
    federation {
        bundle_endpoint {
            address = "0.0.0.0"
            port = 8443
        }
        federates_with "partner.example.com" {
            bundle_endpoint_url = "https://partner.example.com:8443"
            bundle_endpoint_profile "https_spiffe" {
                endpoint_spiffe_id = "spiffe://partner.example.com/spire/server"
            }
        }
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "postgres"
            connection_string = "dbname=spire user=spire host=db.example.org sslmode=verify-full"
            max_open_conns = 20
            conn_max_lifetime = "1h"
        }
    }

    NodeAttestor "aws_iid" {
        plugin_data {
            skip_block_device = true
            assume_role = "spire-server-delegate"
            account_ids_for_local_validation = ["111122223333", "444455556666"]
        }
    }

    NodeAttestor "k8s_psat" {
        plugin_data {
            clusters = {
                "prod-cluster" = {
                    service_account_allow_list = ["spire:spire-agent"]
                }
            }
        }
    }

    KeyManager "aws_kms" {
        plugin_data {
            region = "us-east-1"
            key_identifier_file = "/opt/spire/data/server/keyid"
            enable_tag_based_key_discovery = true
            key_tags = {
                team = "identity"
                "cost-center" = "1234"
            }
            key_policy_file = "/opt/spire/conf/server/key-policy.json"
        }
    }

    UpstreamAuthority "disk" {
        plugin_data {
            cert_file_path = "/opt/spire/conf/server/upstream.crt"
            key_file_path = "/opt/spire/conf/server/upstream.key"
        }
    }

    Notifier "k8sbundle" {
        plugin_data {
            namespace = "spire"
            config_map = <<EOT
spire-bundle
EOT
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "8080"
    live_path = "/live"
    ready_path = "/ready"
}

telemetry {
    Prometheus {
        host = "127.0.0.1"
        port = 9988
    }
    AllowedLabels = []
    BlockedMetrics = []
}
"""


def write(tmp_path: Path, text: str, name: str = "server.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def aws_kms(plugin_data: str, extra: str = "") -> str:
    return (
        'server {\n    trust_domain = "example.org"\n}\n'
        "plugins {\n"
        '    DataStore "sql" {\n        plugin_data { database_type = "sqlite3" }\n    }\n'
        f'    KeyManager "aws_kms" {{\n{extra}        plugin_data {{\n{plugin_data}        }}\n'
        "    }\n"
        "}\n"
    )


def line_of(text: str, fragment: str, occurrence: int = 1) -> int:
    """The 1-based number of the line holding the ``occurrence``-th ``fragment``."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    return found[occurrence - 1]


def error_of(tmp_path: Path, text: str) -> SpireConfigError:
    with pytest.raises(SpireConfigError) as info:
        read_spire_server_config(write(tmp_path, text))
    return info.value


# --- reading SPIRE's values ---------------------------------------------------------------------


def test_realistic_server_conf(tmp_path: Path) -> None:
    config = read_spire_server_config(write(tmp_path, SERVER_CONF))
    assert config.trust_domain is not None and config.trust_domain.value == "example.org"
    assert config.trust_domain.line == line_of(SERVER_CONF, "trust_domain =") == 6
    assert config.region is not None and config.region.value == "us-east-1"
    assert config.key_identifier_file is not None
    assert config.key_identifier_file.value == "/opt/spire/data/server/keyid"
    assert config.key_identifier_file.line == line_of(SERVER_CONF, "key_identifier_file =")
    assert config.key_identifier_value is None
    assert config.tag_based_key_discovery is True
    assert (
        config.origin(config.trust_domain) == f"spire_server_config {tmp_path}/server.conf line 6"
    )


def test_the_rest_of_the_file_parses_into_a_tree() -> None:
    root = parse_hcl(SERVER_CONF)
    server = root.blocks("server")[0].body
    subject = server.blocks("ca_subject")[0].body
    assert subject.attribute("organization") == Attribute(
        "organization", ["SPIFFE", "Example, Inc."], line_of(SERVER_CONF, "organization =")
    )
    federation = server.blocks("federation")[0].body
    partner = federation.blocks("federates_with")[0]
    assert partner.labels == ("partner.example.com",)
    profile = partner.body.blocks("bundle_endpoint_profile")[0]
    assert profile.labels == ("https_spiffe",)
    plugins = root.blocks("plugins")[0].body
    assert [b.labels for b in plugins.blocks("NodeAttestor")] == [("aws_iid",), ("k8s_psat",)]
    psat = plugins.blocks("NodeAttestor")[1].body.blocks("plugin_data")[0].body
    clusters = psat.blocks("clusters")[0].body
    assert clusters.blocks("prod-cluster")[0].body.attribute("service_account_allow_list") == (
        Attribute(
            "service_account_allow_list",
            ["spire:spire-agent"],
            line_of(SERVER_CONF, "service_account_allow_list"),
        )
    )
    notifier = plugins.blocks("Notifier")[0].body.blocks("plugin_data")[0].body
    config_map = notifier.attribute("config_map")
    assert config_map is not None and config_map.value == "spire-bundle\n"
    telemetry = root.blocks("telemetry")[0].body
    port = Attribute("port", 9988, line_of(SERVER_CONF, "port = 9988"))
    assert telemetry.blocks("Prometheus")[0].body.attribute("port") == port
    labels = Attribute("AllowedLabels", [], line_of(SERVER_CONF, "AllowedLabels"))
    assert telemetry.attribute("AllowedLabels") == labels


def test_key_identifier_value_and_object_form_of_plugin_data(tmp_path: Path) -> None:
    text = (
        'server { trust_domain = "prod.example.org" }\n'
        "plugins {\n"
        '  KeyManager "aws_kms" {\n'
        "    plugin_data = {\n"
        '      region = "eu-west-1",\n'
        '      key_identifier_value = "spire-server-1",\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.trust_domain is not None and config.trust_domain.value == "prod.example.org"
    assert config.region is not None and config.region.value == "eu-west-1"
    assert config.key_identifier_value is not None
    assert config.key_identifier_value.value == "spire-server-1"
    assert config.key_identifier_value.line == 6
    assert config.key_identifier_file is None
    assert config.tag_based_key_discovery is None


def test_nested_form_of_the_key_manager(tmp_path: Path) -> None:
    # HCL 1 also accepts the plugin name as a nested block instead of a label.
    text = (
        'server { trust_domain = "example.org" }\n'
        'plugins { KeyManager { aws_kms { plugin_data { region = "us-west-2" } } } }\n'
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.region is not None and config.region.value == "us-west-2"


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    # SPIRE reads "" as unset, as the daemon does.
    config = read_spire_server_config(
        write(
            tmp_path, aws_kms('region = ""\nkey_identifier_value = "x"\nkey_identifier_file = ""\n')
        )
    )
    assert config.region is None
    assert config.key_identifier_file is None


def test_credentials_are_never_returned(tmp_path: Path) -> None:
    config = read_spire_server_config(
        write(
            tmp_path,
            aws_kms(
                'region = "us-east-1"\naccess_key_id = "AKIAEXAMPLE"\n'
                'secret_access_key = "very-secret"\nkey_identifier_value = "x"\n'
            ),
        )
    )
    assert "very-secret" not in repr(config)
    assert "AKIAEXAMPLE" not in repr(config)


def test_a_server_without_aws_kms(tmp_path: Path) -> None:
    text = SERVER_CONF.replace('KeyManager "aws_kms"', 'KeyManager "disk"')
    error = error_of(tmp_path, text)
    assert 'no enabled KeyManager "aws_kms"' in str(error)
    assert str(tmp_path / "server.conf") in str(error)


def test_a_disabled_aws_kms(tmp_path: Path) -> None:
    error = error_of(tmp_path, aws_kms('region = "us-east-1"\n', extra="        enabled = false\n"))
    assert 'no enabled KeyManager "aws_kms"' in str(error)


def test_two_aws_kms_key_managers(tmp_path: Path) -> None:
    text = aws_kms('region = "us-east-1"\n') + 'plugins { KeyManager "aws_kms" { } }\n'
    first, second = line_of(text, '"aws_kms"'), line_of(text, '"aws_kms"', 2)
    error = error_of(tmp_path, text)
    assert f'KeyManager "aws_kms" is defined more than once (lines {first}, {second})' in str(error)
    assert error.line == second


def test_two_server_blocks(tmp_path: Path) -> None:
    error = error_of(tmp_path, 'server { trust_domain = "a" }\n' + aws_kms('region = "x"\n'))
    assert "the server block is defined more than once" in str(error)


def test_trust_domain_must_be_a_string(tmp_path: Path) -> None:
    text = aws_kms('region = "us-east-1"\n').replace('"example.org"', "42")
    error = error_of(tmp_path, text)
    assert str(error) == (
        f"spire_server_config {tmp_path}/server.conf: line 2: server.trust_domain must be a string"
    )


def test_environment_references_are_not_expanded(tmp_path: Path) -> None:
    text = aws_kms('region = "${AWS_REGION}"\n')
    error = error_of(tmp_path, text)
    assert "refers to an environment variable" in str(error)
    assert "region" in str(error)
    assert error.line == line_of(text, "AWS_REGION")


def test_plugin_data_file_is_refused(tmp_path: Path) -> None:
    text = (
        'server { trust_domain = "example.org" }\n'
        'plugins {\n  KeyManager "aws_kms" {\n    plugin_data_file = "/etc/spire/kms.hcl"\n  }\n}\n'
    )
    error = error_of(tmp_path, text)
    assert "plugin_data_file" in str(error)
    assert error.line == 4


def test_unreadable_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(SpireConfigError, match="cannot read it: No such file or directory"):
        read_spire_server_config(tmp_path / "absent.conf")
    path = tmp_path / "latin1.conf"
    path.write_bytes(b'server { trust_domain = "caf\xe9" }\n')
    with pytest.raises(SpireConfigError, match=r"not UTF-8 text \(byte 28\)"):
        read_spire_server_config(path)


# --- syntax -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ('server {\n  trust_domain = "example.org\n}\n', 2, 18, "unterminated string"),
        ("server {\n  trust_domain = \n}\n", 3, 1, "expected a value, got '}'"),
        ('server {\n  trust_domain = "a"\n', 3, 1, "missing '}' for the block opened on line 1"),
        ('server {\n  trust_domain "a" = "b"\n}\n', 2, 20, "unexpected '=' after the block labels"),
        ("server {\n  ports = [1, 2\n}\n", 3, 1, "expected ',' or ']' in list, got '}'"),
        ("server {\n  ports = [1, 2,\n", 3, 1, "missing ']' for the list opened on line 2"),
        ("a = 1\n/* never closed\n", 2, 1, "unterminated /* comment"),
        ("a = 1\n  b = @\n", 2, 7, "unexpected character '@'"),
        ("a = bare\n", 1, 5, "expected a value, got 'bare' (strings are quoted)"),
        ('a = "\\q"\n', 1, 6, "invalid escape \\q in string"),
        ("a = <<EOT\nnever closed\n", 1, 5, "heredoc <<EOT has no closing EOT line"),
        ("a = 1x2\n", 1, 5, "invalid number '1x2'"),
        ("= 1\n", 1, 1, "expected a name, got '='"),
        ("server trust_domain\n", 2, 1, "expected '=' or '{' after 'server', got end of file"),
    ],
)
def test_syntax_errors_name_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpireConfigError) as info:
        read_spire_server_config(path)
    error = info.value
    assert (error.line, error.column) == (line, column), str(error)
    assert str(error).startswith(f"spire_server_config {path}: line {line}, column {column}: ")
    assert fragment in str(error)


def test_scalars_comments_and_strings() -> None:
    root = parse_hcl(
        "# hash comment\n"
        "// slash comment\n"
        "/* block\n comment */\n"
        "int = 42\n"
        "negative = -7\n"
        "float = 1.5e3\n"
        "hex = 0x1F\n"
        "yes = true\n"
        "no = false\n"
        "nothing = null\n"
        'escaped = "tab\\tquote\\"backslash\\\\ \\u00e9"\n'
        'interpolated = "${env("HOME")}/x"\n'
        '"quoted key" = "v"\n'
        "dotted.name-1 = 1\n"
        'nested = [[1, 2], ["a"], {k = "v"}, []]\n'
        "indented = <<-EOT\n    one\n      two\n    EOT\n"
        "a = 1 b = 2, c = 3\n"
    )
    values = {i.name: i.value for i in root.items if isinstance(i, Attribute)}
    assert values["int"] == 42
    assert values["negative"] == -7
    assert values["float"] == 1500.0
    assert values["hex"] == 31
    assert values["yes"] is True and values["no"] is False
    assert values["nothing"] is None
    assert values["escaped"] == 'tab\tquote"backslash\\ é'
    assert values["interpolated"] == '${env("HOME")}/x'
    assert values["quoted key"] == "v"
    assert values["dotted.name-1"] == 1
    nested = values["nested"]
    assert isinstance(nested, list)
    assert nested[:2] == [[1, 2], ["a"]]
    assert nested[2] == Body((Attribute("k", "v", 16),), 16)
    assert nested[3] == []
    assert values["indented"] == "one\n  two\n"
    assert (values["a"], values["b"], values["c"]) == (1, 2, 3)


def test_blocks_with_quoted_and_bare_labels() -> None:
    root = parse_hcl('plugins {\n  KeyManager aws_kms {}\n  "NodeAttestor" "join_token" {}\n}\n')
    plugins = root.blocks("plugins")[0].body
    assert plugins.items == (
        Block("KeyManager", ("aws_kms",), Body((), 2), 2),
        Block("NodeAttestor", ("join_token",), Body((), 3), 3),
    )


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(_TEXT)
def test_json_escaped_strings_round_trip(value: str) -> None:
    # A JSON string literal without "${" is a valid HCL string literal with the same value.
    literal = json.dumps(value, ensure_ascii=False)
    if "${" in value:
        return
    root = parse_hcl(f"key = {literal}\n")
    assert root.attribute("key") == Attribute("key", value, 1)


# --- load_settings ------------------------------------------------------------------------------


def test_settings_come_from_spire_server_conf(tmp_path: Path) -> None:
    conf = write(tmp_path, SERVER_CONF)
    settings = load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert settings.trust_domain == "example.org"
    assert settings.region == "us-east-1"
    assert settings.key_identifier_file == Path("/opt/spire/data/server/keyid")
    assert settings.key_identifier_value is None
    assert settings.spire_server_config == conf


def test_settings_file_names_spire_server_conf(tmp_path: Path) -> None:
    conf = write(tmp_path, SERVER_CONF)
    toml = write(
        tmp_path, f'spire_server_config = "{conf}"\n[reclaim]\nenabled = false\n', "c.toml"
    )
    settings = load_settings(toml, env={})
    assert settings.trust_domain == "example.org"
    assert settings.reclaim.enabled is False


def test_explicit_settings_that_agree_with_spire_are_fine(tmp_path: Path) -> None:
    conf = write(tmp_path, SERVER_CONF)
    toml = write(
        tmp_path,
        f'spire_server_config = "{conf}"\ntrust_domain = "spiffe://example.org"\n',
        "c.toml",
    )
    settings = load_settings(toml, env={f"{P}REGION": "us-east-1"})
    assert settings.trust_domain == "example.org"
    assert settings.region == "us-east-1"
    assert settings.key_identifier_file == Path("/opt/spire/data/server/keyid")


def test_explicit_settings_that_disagree_with_spire_are_an_error(tmp_path: Path) -> None:
    """A silent override would keep another trust domain's or region's keys alive."""
    conf = write(tmp_path, SERVER_CONF)
    toml = write(
        tmp_path,
        f'spire_server_config = "{conf}"\ntrust_domain = "other.example.org"\n',
        "c.toml",
    )
    with pytest.raises(SettingsError) as info:
        load_settings(toml, env={f"{P}REGION": "eu-central-1"})
    problems = info.value.problems
    td_line, region_line = line_of(SERVER_CONF, "trust_domain ="), line_of(SERVER_CONF, "region =")
    assert problems == [
        f"trust_domain: 'other.example.org' disagrees with 'example.org' in spire_server_config "
        f"{conf} line {td_line}; the daemon must act on what SPIRE uses: remove trust_domain "
        "from the daemon's settings (SPIRE's is used), or fix one of the two",
        f"region: 'eu-central-1' disagrees with 'us-east-1' in spire_server_config {conf} line "
        f"{region_line}; the daemon must act on what SPIRE uses: remove region from the "
        "daemon's settings (SPIRE's is used), or fix one of the two",
    ]


def test_a_key_identifier_value_that_is_not_spires_is_an_error(tmp_path: Path) -> None:
    conf = write(tmp_path, SERVER_CONF)  # SPIRE uses key_identifier_file
    with pytest.raises(SettingsError) as info:
        load_settings(
            None,
            env={f"{P}SPIRE_SERVER_CONFIG": str(conf), f"{P}KEY_IDENTIFIER_VALUE": "spire-1"},
        )
    (problem,) = info.value.problems
    assert problem.startswith(
        "key_identifier_value: 'spire-1' names another server than SPIRE's key_identifier_file "
        "'/opt/spire/data/server/keyid'"
    ), problem


def test_key_identifier_values_must_match(tmp_path: Path) -> None:
    conf = write(tmp_path, aws_kms('region = "us-east-1"\nkey_identifier_value = "spire-1"\n'))
    env = {f"{P}SPIRE_SERVER_CONFIG": str(conf)}
    same = load_settings(None, env={**env, f"{P}KEY_IDENTIFIER_VALUE": "spire-1"})
    assert same.key_identifier_value == "spire-1"
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={**env, f"{P}KEY_IDENTIFIER_VALUE": "spire-2"})
    assert info.value.problems[0].startswith("key_identifier_value: 'spire-2' names another")


def test_systemd_unit_style_copy_of_the_identifier_file(tmp_path: Path) -> None:
    """The unit hands the daemon a copy of SPIRE's 0600 file: another path, the same server."""
    server_id = "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43"
    spire_file = tmp_path / "spire" / "keyid"
    spire_file.parent.mkdir()
    spire_file.write_text(server_id)
    conf = write(tmp_path, aws_kms(f'region = "us-east-1"\nkey_identifier_file = "{spire_file}"\n'))
    credential = tmp_path / "credentials" / "spire-server-id"
    credential.parent.mkdir()
    credential.write_text(server_id)
    env = {f"{P}SPIRE_SERVER_CONFIG": str(conf), f"{P}KEY_IDENTIFIER_FILE": str(credential)}
    settings = load_settings(None, env=env)
    assert settings.key_identifier_file == credential
    assert settings.trust_domain == "example.org"
    # A copy that names another server is caught while SPIRE's file can be read...
    credential.write_text("d3f5c6a1-7b8e-4c2d-9f0a-123456789abc")
    with pytest.raises(SettingsError) as info:
        load_settings(None, env=env)
    assert info.value.problems[0].startswith("key_identifier_file: ")
    assert "names another server than SPIRE's key_identifier_file" in info.value.problems[0]
    # ...and trusted when it cannot be (SPIRE's own 0600 file, seen from the sandbox).
    spire_file.unlink()
    assert load_settings(None, env=env).key_identifier_file == credential


def test_empty_environment_value_turns_spire_server_conf_off(tmp_path: Path) -> None:
    conf = write(tmp_path, SERVER_CONF)
    toml = write(tmp_path, f'spire_server_config = "{conf}"\n', "c.toml")
    with pytest.raises(SettingsError) as info:
        load_settings(toml, env={f"{P}SPIRE_SERVER_CONFIG": ""})
    assert any(
        p.startswith("trust_domain: required setting is missing") for p in info.value.problems
    )


def test_bad_values_from_spire_say_where_they_came_from(tmp_path: Path) -> None:
    text = aws_kms('region = "us-east-1"\nkey_identifier_file = "./data/keyid"\n').replace(
        '"example.org"', '"Example.org"'
    )
    conf = write(tmp_path, text)
    relative_line = line_of(text, "./data/keyid")
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf), f"{P}BOGUS": "1"})
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{P}BOGUS: unknown setting")
    assert problems[1] == (
        f"key_identifier_file: './data/keyid' in spire_server_config {conf} line {relative_line} "
        "is relative to "
        "spire-server's working directory, which the daemon cannot know; set key_identifier_file "
        f"(or {P}KEY_IDENTIFIER_FILE) to the file's absolute path"
    )
    assert problems[2].startswith("trust_domain: ")
    assert problems[2].endswith(f"[from spire_server_config {conf} line 2]")


def test_relative_identifier_file_is_fine_when_overridden(tmp_path: Path) -> None:
    conf = write(tmp_path, aws_kms('region = "us-east-1"\nkey_identifier_file = "./keyid"\n'))
    absolute = tmp_path / "keyid"
    settings = load_settings(
        None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf), f"{P}KEY_IDENTIFIER_FILE": str(absolute)}
    )
    assert settings.key_identifier_file == absolute


# --- the SPIRE health listener -----------------------------------------------------------------


def health(block: str) -> str:
    return aws_kms('region = "us-east-1"\nkey_identifier_value = "s1"\n') + block


@pytest.mark.parametrize(
    ("block", "url"),
    [
        ("health_checks {\n  listener_enabled = true\n}\n", "http://localhost:80/live"),
        (
            'health_checks {\n  listener_enabled = true\n  bind_address = "0.0.0.0"\n'
            '  bind_port = "8080"\n  live_path = "/alive"\n}\n',
            "http://127.0.0.1:8080/alive",
        ),
        (
            "health_checks {\n  listener_enabled = true\n  bind_port = 9090\n}\n",
            "http://localhost:9090/live",
        ),
        (
            'health_checks {\n  listener_enabled = true\n  bind_address = "::"\n}\n',
            "http://[::1]:80/live",
        ),
        (
            'health_checks {\n  listener_enabled = true\n  bind_address = "[fd00::5]"\n'
            '  bind_port = "8080"\n}\n',
            "http://[fd00::5]:8080/live",
        ),
        (
            'health_checks {\n  listener_enabled = true\n  bind_address = "10.0.0.7"\n}\n',
            "http://10.0.0.7:80/live",
        ),
    ],
    ids=["defaults", "wildcard-and-paths", "numeric-port", "ipv6-wildcard", "ipv6", "address"],
)
def test_health_url_is_derived_from_health_checks(tmp_path: Path, block: str, url: str) -> None:
    conf = write(tmp_path, health(block))
    settings = load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert settings.spire_health_url == url


@pytest.mark.parametrize(
    "block",
    ["", "health_checks {\n  listener_enabled = false\n}\n", "health_checks {}\n"],
    ids=["no-block", "disabled", "empty"],
)
def test_no_health_url_without_an_enabled_listener(tmp_path: Path, block: str) -> None:
    conf = write(tmp_path, health(block))
    settings = load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert settings.spire_health_url is None


def test_an_explicit_health_url_wins_over_the_derived_one(tmp_path: Path) -> None:
    conf = write(tmp_path, health("health_checks {\n  listener_enabled = true\n}\n"))
    settings = load_settings(
        None,
        env={
            f"{P}SPIRE_SERVER_CONFIG": str(conf),
            f"{P}SPIRE_HEALTH_URL": "http://spire-server:8080/live",
        },
    )
    assert settings.spire_health_url == "http://spire-server:8080/live"


def test_assume_spire_alive_with_a_derived_health_url_is_an_error(tmp_path: Path) -> None:
    conf = write(tmp_path, health("health_checks {\n  listener_enabled = true\n}\n"))
    with pytest.raises(SettingsError) as info:
        load_settings(
            None,
            env={f"{P}SPIRE_SERVER_CONFIG": str(conf), f"{P}ASSUME_SPIRE_ALIVE": "true"},
        )
    (problem,) = info.value.problems
    assert problem.startswith("assume_spire_alive: cannot be true while a spire_health_url is set")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            'health_checks {\n  listener_enabled = true\n  bind_port = "http"\n}\n',
            "health_checks.bind_port 'http' is not a port number",
        ),
        (
            'health_checks {\n  listener_enabled = true\n  live_path = "live"\n}\n',
            "health_checks.live_path 'live' must start with /",
        ),
        (
            'health_checks {\n  listener_enabled = "yes"\n}\n',
            "health_checks.listener_enabled must be true or false",
        ),
    ],
    ids=["port", "path", "flag"],
)
def test_bad_health_checks_are_reported(tmp_path: Path, block: str, message: str) -> None:
    conf = write(tmp_path, health(block))
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert message in info.value.problems[0]


def test_parse_error_in_spire_server_conf_is_a_settings_error(tmp_path: Path) -> None:
    conf = write(tmp_path, 'server {\n  trust_domain = "example.org"\n  bind_port = \n}\n')
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert info.value.problems == [
        f"spire_server_config {conf}: line 4, column 1: invalid HCL: expected a value, got '}}'"
    ]


def test_both_identifiers_in_spire_server_conf(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        aws_kms('region = "us-east-1"\nkey_identifier_file = "/k"\nkey_identifier_value = "v"\n'),
    )
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})
    assert info.value.problems == [
        "key_identifier_file/key_identifier_value: can't have a key identifier file and a key "
        f"identifier value at the same time [from spire_server_config {conf}]"
    ]
