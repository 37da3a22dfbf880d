"""The daemon's settings: a TOML file, overridden by ``SPIRE_KMS_RECONCILER_*`` variables, over
the values SPIRE's own server.conf gives.

:func:`load_settings` is the one entry point the CLI uses. It reports every problem at once as a
:class:`SettingsError` whose lines read ``dotted.name: what is wrong (what is allowed)``.

The package: ``checks`` (constants, the error type, field and cross-field checks), ``sections``
(one model a TOML table), ``schema`` (the whole), ``sources`` (environment and file),
``messages`` (errors as a person reads them), ``load`` (SPIRE's layer and the entry point).
"""

from daemon.durations import Duration, format_duration, parse_duration
from daemon.settings.checks import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    STALE_AFTER_FLOOR,
    SettingsError,
)
from daemon.settings.load import liveness_problem, load_settings, settings_warnings
from daemon.settings.schema import Settings
from daemon.settings.sections import (
    AwsSettings,
    LogSettings,
    MetricsSettings,
    ReclaimSettings,
    RefreshSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "STALE_AFTER_FLOOR",
    "AwsSettings",
    "Duration",
    "LogSettings",
    "MetricsSettings",
    "ReclaimSettings",
    "RefreshSettings",
    "Settings",
    "SettingsError",
    "format_duration",
    "liveness_problem",
    "load_settings",
    "parse_duration",
    "settings_warnings",
]
