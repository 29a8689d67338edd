"""Start `velo serve`: check what can be checked before binding, then hand over to uvicorn."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict
from typing import Any

from dispatcher.profile import load_profile
from dispatcher.serve.app import CONFIG_ENV, ServeConfig, create_app
from dispatcher.serve.served import Served
from velosiped import logs, settings
from velosiped.connection import connect
from velosiped.errors import ConfigError, InputError

__all__ = ["serve"]


def is_loopback(host: str) -> bool:
    """True for an address (or name) that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def serve(cfg: ServeConfig, host: str, port: int, workers: int) -> None:
    """Serve until stopped (SIGTERM or Ctrl-C: uvicorn finishes the requests in hand).

    Raises:
        ConfigError: a non-loopback host without VELO_API_TOKEN, a model that does not load, or
            Redis unreachable: one line, exit 2, before anything listens.
    """
    if not is_loopback(host) and not settings.API_TOKEN.get():
        raise ConfigError(
            f"--host {host} is reachable from other machines: set VELO_API_TOKEN first "
            "(dispatch and retry then want Authorization: Bearer), or bind 127.0.0.1"
        )
    served = Served(cfg.model, cfg.model_sha256, cfg.model_poll, cfg.engine)
    try:  # here, once: a model that does not load is one line now, not a traceback per worker
        served.load()
    except InputError as e:
        raise ConfigError(str(e)) from e
    if cfg.redis_url is not None:
        connect(cfg.redis_url)
    if cfg.reference_profile is not None:  # one line now, not a broken report later
        if cfg.redis_url is None:
            raise ConfigError("--reference-profile judges batches: it needs --redis or REDIS_URL")
        load_profile(cfg.reference_profile)
    logs.configure("text")
    os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
    made = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # each process counts its own
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="velo-serve-metrics-")
    import uvicorn

    # One process serves the model loaded above (hashed and unpickled once); several each load it
    app = create_app(cfg, served) if workers == 1 else "dispatcher.serve.app:from_env"
    try:
        _run(uvicorn, app, host, port, workers)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def _run(uvicorn: Any, app: Any, host: str, port: int, workers: int) -> None:
    uvicorn.run(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # a line per request costs more than the request; /metrics counts them
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
