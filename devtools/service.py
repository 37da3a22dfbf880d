"""What the test servers share: start and stop, used as a context manager, and the endpoint URL
they serve while started."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """A server a test starts and stops: ``with Server() as s:`` starts it and stops it after.

    Subclasses implement :meth:`start` and :meth:`stop` and set ``_endpoint_url`` while started.
    """

    _endpoint_url: str | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid while started."""
        if self._endpoint_url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._endpoint_url

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
