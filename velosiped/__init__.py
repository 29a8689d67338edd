"""Velosiped's shared core: what the dispatcher and the workers both rely on, importing neither."""

from typing import Any

__all__ = ["Client", "predict", "run"]


def __getattr__(name: str) -> Any:
    # The Python API, loaded on first use: `import velosiped` (as every worker and command does)
    # stays light, and the core's modules load without the sides.
    if name in __all__:
        from velosiped import api

        return getattr(api, name)
    raise AttributeError(f"module 'velosiped' has no attribute {name!r}")
