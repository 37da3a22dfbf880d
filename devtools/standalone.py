"""``make emulator``: the seeded KMS emulator on its own, for trying the daemon by hand.

Starts the emulator (a moto server on 127.0.0.1) seeded with the demo trust domain of
``make demo``, and a stand-in for this server's SPIRE health listener, writes a settings file
that points at both, prints how to use them, and serves until Ctrl-C::

    make emulator
    # in another shell, with the printed exports:
    .venv/bin/spire-kms-reconciler keys --config /tmp/spire-kms-emulator-.../config.toml
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

from devtools.demo import TRUST_DOMAIN, seed, settings_file
from devtools.emulator import Emulator
from devtools.spire_health import SpireHealth


def main() -> int:
    server_id = str(uuid.uuid4())
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with (
        Emulator() as emu,
        SpireHealth() as spire,
        tempfile.TemporaryDirectory(prefix="spire-kms-emulator-") as tmp,
    ):
        seed(emu, server_id, datetime.now(UTC))
        config = settings_file(
            Path(tmp),
            server_id,
            spire,
            f'[aws]\nendpoint_url = "{emu.endpoint_url}"\n[log]\nformat = "console"\n',
        )
        exports = " ".join(
            f"{k}={v}" for k, v in emu.env().items() if k not in ("AWS_ENDPOINT_URL",)
        )
        print(f"emulator (KMS and the tagging API): {emu.endpoint_url}")
        print(f"SPIRE health stand-in:              {spire.url}")
        print(f"trust domain {TRUST_DOMAIN}, this server {server_id}")
        print(f"settings:                           {config}")
        print("\nin another shell:")
        print(f"  export {exports}")
        print(f"  .venv/bin/spire-kms-reconciler keys --config {config}")
        print(f"  .venv/bin/spire-kms-reconciler once --dry-run --config {config}")
        print(f"  .venv/bin/spire-kms-reconciler run --config {config}")
        print("\nCtrl-C to stop (the state is lost).", flush=True)
        while not stop.wait(0.5):
            pass
    print("stopped")
    return 0


if __name__ == "__main__":
    os.environ.pop("AWS_PROFILE", None)
    sys.exit(main())
