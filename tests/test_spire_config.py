"""Tests for daemon.spire_config (SPIRE's server.conf) and its use by load_settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.settings import SettingsError, load_settings
from daemon.spire_config import SpireConfigError, read_spire_server_config

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


def test_a_plugin_declared_twice_is_an_error(tmp_path: Path) -> None:
    text = aws_kms('region = "us-east-1"\n').replace(
        '    DataStore "sql"',
        '    KeyManager "aws_kms" { plugin_data { region = "x" } }\n    DataStore "sql"',
    )
    error = error_of(tmp_path, text)
    first, second = line_of(text, '"aws_kms"'), line_of(text, '"aws_kms"', 2)
    assert (
        f'plugin "KeyManager" "aws_kms" is declared more than once (lines {first} and {second})'
        in (str(error))
    )


def test_the_first_plugins_section_counts(tmp_path: Path) -> None:
    """SPIRE keeps the plugins section as a syntax tree: HCL1 sets it from the first match and
    decodes later ones into it, which leaves it as it was."""
    text = aws_kms('region = "us-east-1"\nkey_identifier_value = "first"\n') + (
        'plugins { KeyManager "aws_kms" { plugin_data { region = "eu-west-1" } } }\n'
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.region is not None and config.region.value == "us-east-1"
    assert config.key_identifier_value is not None
    assert config.key_identifier_value.value == "first"
    # a later plugins "section" that is not a block fails SPIRE's decoding
    error = error_of(tmp_path, text + 'plugins = "x"\n')
    assert "plugins is given again as something else than a block" in str(error)


def test_repeated_server_blocks_merge_and_the_last_value_wins(tmp_path: Path) -> None:
    text = 'server { trust_domain = "a.example.org" }\n' + aws_kms(
        'region = "us-east-1"\nkey_identifier_value = "x"\n'
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.trust_domain is not None and config.trust_domain.value == "example.org"
    assert config.trust_domain.line == 3


def test_names_match_in_any_case_as_hcl1_matches_them(tmp_path: Path) -> None:
    text = (
        'SERVER { Trust_Domain = "a.example.org"\n TRUST_DOMAIN = "b.example.org" }\n'
        'Plugins { KeyManager "aws_kms" { Plugin_Data { REGION = "eu-west-1"\n'
        'Key_Identifier_Value = "srv" } } }\n'
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.trust_domain is not None and config.trust_domain.value == "b.example.org"
    assert config.region is not None and config.region.value == "eu-west-1"
    assert config.key_identifier_value is not None and config.key_identifier_value.value == "srv"
    assert config.key_identifier_value.line == 4


def test_plugin_type_and_name_match_exactly(tmp_path: Path) -> None:
    """SPIRE's catalog finds KeyManager "aws_kms" by its exact names."""
    text = aws_kms('region = "us-east-1"\nkey_identifier_value = "x"\n').replace(
        "KeyManager", "keymanager"
    )
    assert 'no enabled KeyManager "aws_kms"' in str(error_of(tmp_path, text))


def test_the_three_key_form_of_the_key_manager(tmp_path: Path) -> None:
    text = (
        'server { trust_domain = "example.org" }\n'
        'plugins {\n  KeyManager "aws_kms" plugin_data {\n    region = "us-east-2"\n'
        '    key_identifier_value = "three"\n  }\n}\n'
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.region is not None and config.region.value == "us-east-2"
    assert config.key_identifier_value is not None and config.key_identifier_value.line == 5


def test_json_as_spires_helm_chart_renders_it(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "server": {"trust_domain": "example.org", "bind_port": 8081},
            "plugins": {
                "KeyManager": [
                    {
                        "aws_kms": {
                            "plugin_data": {
                                "region": "us-east-1",
                                "key_identifier_file": "/run/spire/data/aws-kms-key-id",
                            }
                        }
                    }
                ]
            },
            "health_checks": {"listener_enabled": True, "bind_port": "8080"},
        },
        indent=2,
    )
    config = read_spire_server_config(write(tmp_path, text, "server.json"))
    assert config.trust_domain is not None and config.trust_domain.value == "example.org"
    assert config.region is not None and config.region.value == "us-east-1"
    assert config.key_identifier_file is not None
    assert config.key_identifier_file.value == "/run/spire/data/aws-kms-key-id"
    assert config.key_identifier_file.line == line_of(text, "key_identifier_file")
    assert config.health_url is not None
    assert config.health_url.value == "http://localhost:8080/live"


def test_a_number_is_read_as_its_text_and_a_list_is_refused(tmp_path: Path) -> None:
    text = aws_kms('region = "us-east-1"\nkey_identifier_value = 12345\n')
    config = read_spire_server_config(write(tmp_path, text))
    assert config.key_identifier_value is not None and config.key_identifier_value.value == "12345"
    text = aws_kms('region = "us-east-1"\n').replace('"example.org"', '["example.org"]')
    error = error_of(tmp_path, text)
    assert str(error) == (
        f"spire_server_config {tmp_path}/server.conf: line 2: server.trust_domain must be a "
        "string (SPIRE does not start)"
    )


def test_environment_references_are_not_expanded(tmp_path: Path) -> None:
    text = aws_kms('region = "${AWS_REGION}"\n')
    error = error_of(tmp_path, text)
    assert "refers to an environment variable, which SPIRE expands only" in str(error)
    assert "spire_server_config_expand_env = true" in str(error)
    assert error.line == line_of(text, "AWS_REGION")


def test_environment_references_are_expanded_as_spire_expand_env_does(tmp_path: Path) -> None:
    text = aws_kms('region = "${AWS_REGION}"\nkey_identifier_value = "srv-$$-$NODE"\n').replace(
        '"example.org"', '"$TD"'
    )
    config = read_spire_server_config(
        write(tmp_path, text),
        expand_env=True,
        environ={"AWS_REGION": "ap-south-1", "NODE": "n1", "TD": "prod.example.org"},
    )
    assert config.region is not None and config.region.value == "ap-south-1"
    assert config.key_identifier_value is not None
    assert config.key_identifier_value.value == "srv-$-n1"
    assert config.trust_domain is not None and config.trust_domain.value == "prod.example.org"


def test_expand_env_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path, aws_kms('region = "$AWS_REGION"\nkey_identifier_value = "x"\n'))
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    env = {
        f"{P}SPIRE_SERVER_CONFIG": str(conf),
        f"{P}SPIRE_SERVER_CONFIG_EXPAND_ENV": "true",
    }
    settings = load_settings(None, env=env)
    assert settings.region == "sa-east-1"
    assert settings.spire_server_config_expand_env is True
    with pytest.raises(SettingsError, match="refers to an environment variable"):
        load_settings(None, env={f"{P}SPIRE_SERVER_CONFIG": str(conf)})


def test_plugin_data_file_is_followed_when_absolute(tmp_path: Path) -> None:
    data = tmp_path / "kms.hcl"
    data.write_text(
        '# SPIRE reads this file as the plugin configuration\nregion = "eu-north-1"\n'
        'key_identifier_value = "from-file"\n'
    )
    text = (
        'server { trust_domain = "example.org" }\n'
        f'plugins {{\n  KeyManager "aws_kms" {{\n    plugin_data_file = "{data}"\n  }}\n}}\n'
    )
    config = read_spire_server_config(write(tmp_path, text))
    assert config.region is not None and config.region.value == "eu-north-1"
    assert config.key_identifier_value is not None
    assert config.key_identifier_value.line == 3
    assert config.origin(config.key_identifier_value) == (
        f"plugin_data_file {data} line 3 (from {tmp_path}/server.conf)"
    )


def test_plugin_data_file_relative_or_with_plugin_data_is_refused(tmp_path: Path) -> None:
    text = (
        'server { trust_domain = "example.org" }\n'
        'plugins {\n  KeyManager "aws_kms" {\n    plugin_data_file = "kms.hcl"\n  }\n}\n'
    )
    error = error_of(tmp_path, text)
    assert "is relative to spire-server's working directory" in str(error)
    assert error.line == 4
    both = text.replace('plugin_data_file = "kms.hcl"', 'plugin_data_file = "/k" plugin_data {}')
    assert "sets both plugin_data and plugin_data_file" in str(error_of(tmp_path, both))


def test_a_heredoc_last_in_plugin_data_stops_spire(tmp_path: Path) -> None:
    """SPIRE prints plugin_data back to text without the heredoc's final newline, and the plugin
    then cannot read it: such a configuration never starts, so the daemon refuses it too."""
    text = aws_kms('key_identifier_value = "x"\nregion = <<EOF\nus-east-1\nEOF\n')
    error = error_of(tmp_path, text)
    assert "cannot be read back as SPIRE hands it to the plugin" in str(error)
    assert "heredoc not terminated" in str(error)


def test_unreadable_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(SpireConfigError, match="cannot read it: No such file or directory"):
        read_spire_server_config(tmp_path / "absent.conf")
    path = tmp_path / "latin1.conf"
    path.write_bytes(b'server { trust_domain = "caf\xe9" }\n')
    with pytest.raises(SpireConfigError, match=r"line 1, column 29: illegal UTF-8 encoding"):
        read_spire_server_config(path)


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
        f"spire_server_config {conf}: line 4, column 1: Unknown token: RBRACE (SPIRE does not "
        "start)"
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
