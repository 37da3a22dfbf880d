"""A stand-in for a SPIRE server's health listener (``health_checks``), for tests and the demo.

SPIRE serves ``GET /live`` (and ``/ready``) on its health listener: 200 with a JSON body while
live, 500 otherwise. This server answers the same way on 127.0.0.1 (an OS-assigned port) from a
daemon thread, and can be switched to the ways a probe fails::

    with SpireHealth() as spire:
        spire.url                 # http://127.0.0.1:<port>/live
        spire.set("dead")         # 500 {"...": "subsystem is not live"}
        spire.set("unavailable")  # 503
        spire.set("hang")         # accept, never answer (the probe times out)
        spire.set("closed")       # nothing listens: connection refused
        spire.set("alive")        # 200 again (listening again after "closed")
        spire.requests            # GETs served so far

It is not SPIRE: only what the daemon's probe can tell apart is modelled.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time

from devtools.service import Service

__all__ = ["STATES", "SpireHealth"]

#: The answers the stand-in can give.
STATES = ("alive", "dead", "unavailable", "hang", "closed")


class SpireHealth(Service):
    """A fake SPIRE health listener on 127.0.0.1; see the module docstring."""

    def __init__(self, state: str = "alive", live_path: str = "/live") -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; choose from {STATES}")
        self.state = state
        self.live_path = live_path
        self.requests = 0
        self._port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()  # lets hanging requests go when stopping
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port it listens on (kept across "closed" and back)."""
        return self._port

    @property
    def url(self) -> str:
        """The live check's URL."""
        return f"http://127.0.0.1:{self._port}{self.live_path}"

    def start(self) -> None:
        """Start listening (on the same port as before, if it was started before)."""
        if self._server is not None:
            return
        handler = self._handler()
        deadline = time.monotonic() + 5
        while True:
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), handler)
                break
            except OSError:
                if not self._port or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the old socket may still be closing
        server.daemon_threads = True
        self._port = int(server.server_address[1])
        self._server = server
        self._release.clear()
        self._thread = threading.Thread(target=server.serve_forever, name="spire-health")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections are refused from now on."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def set(self, state: str) -> None:
        """Switch how it answers (see :data:`STATES`)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; choose from {STATES}")
        with self._lock:
            self.state = state
        if state == "closed":
            self.stop()
        elif self._server is None:
            self.start()

    def __enter__(self) -> SpireHealth:
        self.start()  # "closed" too: a port number is taken, then refused on
        if self.state == "closed":
            self.stop()
        return self

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read the daemon's output, not this one's."""

            def do_GET(self) -> None:
                with stand_in._lock:
                    stand_in.requests += 1
                    state = stand_in.state
                if state == "hang":
                    stand_in._release.wait(60)
                    self.close_connection = True
                    return
                if self.path.split("?", 1)[0] not in (stand_in.live_path, "/ready"):
                    self._answer(404, {"error": "not found"})
                elif state == "alive":
                    self._answer(200, {})
                elif state == "dead":
                    self._answer(500, {"server": "subsystem is not live"})
                else:
                    self._answer(503, {"error": "unavailable"})

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

        return Handler
