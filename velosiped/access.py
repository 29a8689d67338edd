"""Where a worker may read and write, and load models from: the allow-lists, judged in one place."""

from __future__ import annotations

from velosiped import settings, storage
from velosiped.errors import ConfigError

__all__ = ["ALLOWED_PREFIXES_ENV", "MODEL_PREFIXES_ENV", "check_path", "check_prefix"]

ALLOWED_PREFIXES_ENV = settings.ALLOWED_PREFIXES.env
MODEL_PREFIXES_ENV = settings.MODEL_PREFIXES.env
_BY_ENV = {s.env: s for s in (settings.ALLOWED_PREFIXES, settings.MODEL_PREFIXES)}


def check_prefix(uri: str, env: str, what: str) -> None:
    """Refuse ``uri`` unless it lies under one of the comma-separated prefixes in ``env`` (if set)."""
    allowed = [storage.normalize(p) for p in _BY_ENV[env].get()]
    if allowed and not any(uri == p or uri.startswith(p.rstrip("/") + "/") for p in allowed):
        raise ConfigError(f"{uri}: {what} outside {env} ({', '.join(allowed)}); move it or extend {env}")


def check_path(uri: str, allowed_env: str = ALLOWED_PREFIXES_ENV) -> None:
    """Whatever a job says, touch only absolute paths or S3 keys, without '..', under the allowed prefixes."""
    if ".." in uri.split("/") or not (storage.is_s3(uri) or uri.startswith("/")):
        raise ConfigError(f"{uri}: relative or '..' paths are refused")
    check_prefix(uri, allowed_env, "path" if allowed_env == ALLOWED_PREFIXES_ENV else "model")
