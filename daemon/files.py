"""Reading the files the daemon is pointed at (its settings file, SPIRE's files), with one wording
for what can go wrong; each caller puts the file's role in front."""

from __future__ import annotations

from pathlib import Path


class FileProblem(Exception):
    """Why a file could not be read, worded to follow its name: ``"cannot read it: ..."``."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        #: The file does not exist (callers with a more helpful word for that say it instead).
        self.missing = missing


def read_text(path: Path, *, lenient: bool = False) -> str:
    """The file's text, decoded as UTF-8.

    ``lenient`` keeps bytes that are not UTF-8 as surrogates instead of refusing the file: the
    HCL reader then reports them where they stand, as SPIRE's own library does.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise FileProblem(f"cannot read it: {exc.strerror}", missing=True) from None
    except OSError as exc:
        raise FileProblem(f"cannot read it: {exc.strerror}") from None
    if lenient:
        return raw.decode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"not UTF-8 text (byte {exc.start})") from None
