"""Where a worker may read and write, and load models from: the allow-lists, judged in one place."""

from __future__ import annotations

from velosiped import settings, storage
from velosiped.errors import ConfigError
from velosiped.settings import Setting

__all__ = ["check_path", "check_prefix"]

Prefixes = Setting[tuple[str, ...]]


def check_prefix(uri: str, setting: Prefixes, what: str) -> None:
    """Refuse ``uri`` unless it lies under one of the comma-separated prefixes of ``setting`` (if set)."""
    allowed = [storage.normalize(p) for p in setting.get()]
    if allowed and not any(uri == p or uri.startswith(p.rstrip("/") + "/") for p in allowed):
        env = setting.env
        raise ConfigError(f"{uri}: {what} outside {env} ({', '.join(allowed)}); move it or extend {env}")


def check_path(uri: str, setting: Prefixes = settings.ALLOWED_PREFIXES) -> None:
    """Whatever a job says, touch only absolute paths or S3 keys, without '..', under the allowed prefixes."""
    if ".." in uri.split("/") or not (storage.is_s3(uri) or uri.startswith("/")):
        raise ConfigError(f"{uri}: relative or '..' paths are refused")
    check_prefix(uri, setting, "path" if setting is settings.ALLOWED_PREFIXES else "model")
