"""Local folders: plain files, written through a temporary file renamed into place."""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from typing import IO, Any, cast

from velosiped.errors import ConfigError, InputError, VeloError
from velosiped.storage.base import LINEAGE_SUFFIX, Bounded, ObjectInfo, changed

__all__ = ["LocalTransport", "matches"]

_OTHER_CODECS = (".bz2", ".xz", ".zst")
"""Compressions smart_open reads by name; local plain and ``.gz`` files need neither it nor boto3."""


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


_HOST = socket.gethostname()


def _temp_prefix(name: str) -> str:
    """How this process names its temporary output for ``name``; :data:`_TEMP` reads it back."""
    return f".{name}.velo-{os.getpid()}@{_HOST}."


_TEMP = re.compile(r"\..+\.velo-(\d+)@(.+)\.[^.]+\.tmp")
"""A temporary output, ``.<name>.velo-<pid>@<host>.<random>.tmp``, while its writer writes."""


def _left_by_dead_writer(path: str, name: str) -> bool:
    """True for a temporary output (never an input); one whose writer on this host is dead (a
    worker killed with ``kill -9`` mid-file) is removed. Another host's, or a live process's, is
    left alone: it may be writing still."""
    found = _TEMP.fullmatch(name)
    if found is None:
        return False
    if found[2] == _HOST and not _alive(int(found[1])):
        with contextlib.suppress(OSError):
            os.unlink(path)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _info(path: str) -> ObjectInfo:
    st = os.stat(path)
    return ObjectInfo(path, f"mtime:{st.st_mtime_ns}:size:{st.st_size}", st.st_size)


class LocalTransport:
    """Absolute local paths."""

    def list_files(
        self, source: str, patterns: tuple[str, ...], start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        # Walked whole whatever ``start_after``: it costs only a stat per file.
        if os.path.isfile(source):
            if matches(os.path.basename(source), patterns):
                yield _info(source)
            return
        if not os.path.isdir(source):
            raise ConfigError(f"{source}: no such file or folder; check SOURCE")
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = os.path.join(root, name)
                if not matches(name, patterns) or _left_by_dead_writer(path, name):
                    continue
                with contextlib.suppress(FileNotFoundError):  # renamed or removed since the walk
                    yield _info(path)

    def head(self, uri: str) -> ObjectInfo | None:
        return _info(uri) if os.path.isfile(uri) else None

    def open_read(self, uri: str, version: str | None = None) -> IO[bytes]:
        if version is not None:
            self.check_unchanged(uri, version)
        try:
            if uri.endswith(".gz"):
                return cast(IO[bytes], gzip.open(uri, "rb"))
            if uri.endswith(_OTHER_CODECS):
                import smart_open

                return smart_open.open(uri, "rb")
            return open(uri, "rb")
        except OSError as e:
            raise InputError(f"{uri}: cannot open ({e.strerror or e})") from e

    def check_unchanged(self, uri: str, version: str) -> None:
        try:
            st = os.stat(uri)
        except OSError as e:
            raise InputError(f"{uri}: cannot open ({e.strerror or e})") from e
        if f"mtime:{st.st_mtime_ns}:size:{st.st_size}" != version:
            raise changed(uri)

    def open_range(self, uri: str, version: str, start: int, end: int) -> IO[bytes]:
        try:
            f = open(uri, "rb")  # noqa: SIM115 - returned to the caller
        except OSError as e:
            raise InputError(f"{uri}: cannot open ({e.strerror or e})") from e
        st = os.fstat(f.fileno())
        if f"mtime:{st.st_mtime_ns}:size:{st.st_size}" != version:
            f.close()
            raise changed(uri)
        f.seek(start)
        return Bounded(f, end - start)  # type: ignore[return-value]

    @contextlib.contextmanager
    def write_atomic(
        self, uri: str, metadata: dict[str, str] | None = None, *, small: bool = False
    ) -> Iterator[IO[bytes]]:
        folder, name = os.path.split(uri)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name), suffix=".tmp", dir=folder)
        try:
            with open(fd, "wb") as raw:
                # The gzip header names the output, not the temporary file.
                gz = uri.endswith(".gz")
                out = cast(IO[bytes], gzip.GzipFile(filename=name, mode="wb", fileobj=raw) if gz else raw)
                with out:
                    yield out
            os.chmod(tmp, 0o644)
            os.replace(tmp, uri)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_json(self, uri: str) -> dict[str, Any] | None:
        try:
            with open(uri, "rb") as f:
                obj = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def read_lineage(self, output_uri: str) -> dict[str, str] | None:
        if not os.path.isfile(output_uri):
            return None
        meta = self.read_json(output_uri + LINEAGE_SUFFIX)
        return {k: str(v) for k, v in meta.items()} if meta else None

    def write_lineage(self, output_uri: str, lineage: dict[str, str]) -> None:
        # A local file has no object metadata: a sidecar beside it holds its lineage.
        with self.write_atomic(output_uri + LINEAGE_SUFFIX) as out:
            out.write(json.dumps(lineage, indent=2, sort_keys=True).encode() + b"\n")

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uri)

    def delete_many(self, uris: list[str]) -> None:
        for uri in uris:
            self.delete(uri)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        if not os.path.isdir(prefix):
            return {}
        return {e.path: e.stat().st_size for e in os.scandir(prefix) if e.is_file()}

    def delete_prefix(self, prefix: str) -> None:
        for path in self.list_sizes(prefix):
            self.delete(path)
        for folder in (prefix, os.path.dirname(prefix.rstrip("/"))):
            with contextlib.suppress(OSError):  # not empty: another file's parts are still there
                os.rmdir(folder)

    def compose(self, uri: str, parts: list[tuple[str, int]], metadata: dict[str, str]) -> None:
        raise NotImplementedError("local outputs are assembled by copying (storage.write_atomic)")

    def translate(self, uri: str, error: BaseException) -> VeloError | None:
        """None: local trouble is the file's (the caller says how), never worth retrying here."""
        return None
