"""Where a worker may read and write, and load models from: the allow-lists, judged in one place.

A path is judged where it really is: symlinks and ``..`` resolved (``os.path.realpath``, which
also resolves the existing folders of a path not made yet, such as an output), and so is each
prefix, so a symlink cannot walk around the list and an allowed prefix under a symlinked folder
(``/tmp`` on macOS) still works. A prefix is a folder: ``/data/in`` allows ``/data/in/x``, not
``/data/in2/x``. S3 has no symlinks; a key with a ``..`` segment is refused.

The check and the use are two steps: a symlink swapped in between is not seen (see docs/SECURITY.md).
"""

from __future__ import annotations

import os

from velosiped import settings, storage
from velosiped.errors import ConfigError
from velosiped.jobs import error_uri
from velosiped.settings import Setting

__all__ = ["check_output", "check_path", "real_path"]

Prefixes = Setting[tuple[str, ...]]


def real_path(uri: str) -> str:
    """Where ``uri`` really is: a local path with its symlinks and ``..`` resolved; an S3 URI as it is."""
    return uri if storage.is_s3(uri) else os.path.realpath(uri)


def _under(uri: str, prefix: str) -> bool:
    return uri == prefix or uri.startswith(prefix.rstrip("/") + "/")


def check_path(uri: str, setting: Prefixes = settings.ALLOWED_PREFIXES) -> str:
    """Refuse ``uri`` unless it is absolute (or S3), has no ``..`` segment, and really lies under one
    of ``setting``'s prefixes (when set). Returns where it really is (``uri`` itself when no prefix
    is set).

    Raises:
        ConfigError: one line naming ``uri``, where it resolves to, and the variable.
    """
    if ".." in uri.split("/") or not (storage.is_s3(uri) or uri.startswith("/")):
        raise ConfigError(f"{uri}: relative or '..' paths are refused")
    given = [storage.normalize(p) for p in setting.get()]
    if not given:
        return uri  # nothing to be under: the symlinks need not be resolved (a syscall a path segment)
    real = real_path(uri)
    if any(_under(real, real_path(p)) for p in given):
        return real
    what = "model" if setting is settings.MODEL_PREFIXES else "path"
    where = f"{what} outside" if real == uri.rstrip("/") or real == uri else f"resolves to {real}, outside"
    env = setting.env
    raise ConfigError(f"{uri}: {where} {env} ({', '.join(given)}); move it or extend {env}")


def check_output(output: str) -> None:
    """The output and the files kept beside it (the lineage sidecar, the error file): each is judged
    alone, as any of them may be a symlink of its own."""
    for uri in (output, output + storage.LINEAGE_SUFFIX, error_uri(output)):
        check_path(uri)
