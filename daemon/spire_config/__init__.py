"""Read what the daemon can reuse from SPIRE's own server configuration, exactly as SPIRE reads it.

SPIRE's ``server.conf`` is HCL1, or its JSON form (SPIRE's Helm chart renders JSON); it is parsed
by :mod:`daemon.hcl` and decoded here the way SPIRE's server loads it:

* the whole text, with ``$VAR`` and ``${VAR}`` expanded first when ``expand_env`` is set
  (``spire-server run -expandEnv``), is decoded into the sections the daemon reads:
  ``server.trust_domain`` and ``health_checks``, with HCL1's matching (case-insensitive names,
  several matches decoded in order: the last value wins, repeated blocks merge) and its types
  (a string field takes a string, a heredoc or a number, nothing else);
* of the ``plugins`` sections, the first one counts (a later one must be a block too); each
  plugin is named by the first two keys on its path (``KeyManager "aws_kms" {...}``,
  ``KeyManager { aws_kms {...} }`` or ``KeyManager "aws_kms" plugin_data {...}``), a plugin
  named twice is an error, and
  ``KeyManager`` ``aws_kms`` is found by its exact names;
* its ``plugin_data`` is printed back to HCL text and decoded again, as SPIRE hands it to the
  plugin (or the file ``plugin_data_file`` names is read); ``region``, ``key_identifier_file``
  and ``key_identifier_value`` are taken from it.

:func:`read_spire_server_config` returns those values, each with the file and line it came from.
It never returns ``access_key_id``/``secret_access_key``: the daemon takes credentials from the
AWS chain only. Fields of SPIRE's configuration that the daemon does not read are not checked:
SPIRE reports their errors itself.
"""

from daemon.spire_config.sections import plugin_names
from daemon.spire_config.values import SpireConfigError, SpireServerConfig, SpireValue
from daemon.spire_config.view import (
    SpireView,
    decode_spire_server_config,
    health_live_url,
    read_spire_server_config,
)

__all__ = [
    "SpireConfigError",
    "SpireServerConfig",
    "SpireValue",
    "SpireView",
    "decode_spire_server_config",
    "health_live_url",
    "plugin_names",
    "read_spire_server_config",
]
