"""What every transport implements, and the pieces they share (listed files, bounded readers, cause chains)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from velosiped.errors import InputError, VeloError

__all__ = ["Bounded", "ObjectInfo", "Transport", "causes", "changed"]

LINEAGE_SUFFIX = ".velo.json"
"""Sidecar holding an output's lineage where the store has no object metadata (local folders)."""

MAX_HEADER = 16 * 1024 * 1024
"""Longest header line accepted."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed file: its URI, a version string that changes when its content does, its size."""

    uri: str
    version: str
    size: int


class Transport(Protocol):
    """One kind of store (S3, local folders). Each raises only Velosiped's errors for what its
    libraries raise: :meth:`translate` is the one place that knows them."""

    def list_files(self, source: str, patterns: tuple[str, ...], start_after: str | None) -> Iterator[ObjectInfo]: ...

    def head(self, uri: str) -> ObjectInfo | None: ...

    def open_read(self, uri: str, version: str | None = None) -> IO[bytes]:
        """A streaming reader of ``uri``; with ``version``, of that version only (else ``changed``)."""
        ...

    def check_unchanged(self, uri: str, version: str) -> None:
        """Raise ``changed`` if ``uri`` is no longer ``version`` (before an output made from it is kept)."""
        ...

    def open_range(self, uri: str, version: str, start: int, end: int) -> IO[bytes]: ...

    def write_atomic(
        self, uri: str, metadata: dict[str, str] | None, *, small: bool = False
    ) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def read_json(self, uri: str) -> dict[str, Any] | None: ...

    def read_lineage(self, output_uri: str) -> dict[str, str] | None: ...

    def write_lineage(self, output_uri: str, lineage: dict[str, str]) -> None:
        """Record what made an output just written, where the output itself cannot hold it."""
        ...

    def delete(self, uri: str) -> None: ...

    def delete_many(self, uris: list[str]) -> None: ...

    def list_sizes(self, prefix: str) -> dict[str, int]: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def compose(self, uri: str, parts: list[tuple[str, int]], metadata: dict[str, str]) -> None: ...

    def translate(self, uri: str, error: BaseException) -> VeloError | None:
        """Velosiped's error for ``error`` (or an error in its cause chain) raised by this
        transport's libraries about ``uri``; None when they are not to blame."""
        ...


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps (``__cause__``, else ``__context__``), outermost first.

    smart_open re-raises S3 errors as OSError/ValueError, pyarrow a failing stream as
    OSError: the library error that says what happened is further down the chain.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def changed(uri: str) -> InputError:
    return InputError(f"{uri}: changed since it was dispatched; dispatch it again")


class Bounded(io.RawIOBase):
    """At most ``left`` bytes of ``src``, then end of file.

    ``read`` hands ``src``'s bytes on as they are: no buffer layer copying them again (one
    costs more than the parsing saves at gigabytes).
    """

    def __init__(self, src: Any, left: int) -> None:
        self._src = src
        self._left = left

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._src.read(want) if want > 0 else b""
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._src.close()
        super().close()
