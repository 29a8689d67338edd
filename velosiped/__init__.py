"""Velosiped's shared core: what the dispatcher and the workers both rely on, importing neither."""
