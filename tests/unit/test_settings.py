"""Every VELO_* setting is declared once, in velosiped/settings.py, and read when used."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from velosiped import settings
from velosiped.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def declared() -> dict[str, settings.Setting]:
    return {s.env: s for s in vars(settings).values() if isinstance(s, settings.Setting)}


def test_every_velo_variable_the_code_names_is_declared_in_settings():
    named = set()
    for package in ("velosiped", "dispatcher", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            named |= set(re.findall(r"[\"'](VELO_[A-Z0-9_]+)[\"']", path.read_text()))
    assert named <= set(declared()), f"read outside velosiped/settings.py: {sorted(named - set(declared()))}"


OTHER_VARIABLES = {"REDIS_URL", "AWS_MAX_ATTEMPTS", "PROMETHEUS_MULTIPROC_DIR"}
"""Variables the code reads that are not Velosiped's own settings (a URL, boto3's, prometheus_client's)."""


def environment_reads(path: Path) -> list[str]:
    """What ``path`` reads from ``os.environ`` (``.get(NAME)``, ``[NAME]``) or ``os.getenv(NAME)``:
    each name as written (a string, or the expression naming it)."""
    tree = ast.parse(path.read_text())
    constants = {  # NAME = "TEXT" at module level: a read through NAME reads TEXT
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            if func in ("os.environ.get", "os.getenv", "environ.get"):
                target = node.args[0]
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) in ("os.environ", "environ")
        ):
            target = node.slice
        if target is not None:
            if isinstance(target, ast.Constant):
                found.append(target.value)
            else:
                found.append(constants.get(ast.unparse(target), ast.unparse(target)))
    return found


def test_only_settings_reads_the_environment_for_velo_variables():
    readers = {}
    for package in ("velosiped", "dispatcher", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "settings.py":
                continue
            names = [n for n in environment_reads(path) if n not in OTHER_VARIABLES]
            if names:
                readers[str(path.relative_to(ROOT))] = names
    assert not readers, f"these read the environment themselves, not through velosiped.settings: {readers}"


def test_every_setting_has_a_docstring_in_the_module():
    source = (ROOT / "velosiped" / "settings.py").read_text()
    for name in settings.__all__:
        if name == "Setting":
            continue
        assert re.search(rf"^{name}: Setting\[.*?\n\)?\n?\"\"\"", source, re.S | re.M), f"{name} has no docstring"


def test_a_setting_is_read_when_used_and_a_bad_value_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("VELO_HEARTBEAT_TTL", raising=False)
    assert settings.HEARTBEAT_TTL.get() == 30
    monkeypatch.setenv("VELO_HEARTBEAT_TTL", "4")
    assert settings.HEARTBEAT_TTL.get() == 4
    monkeypatch.setenv("VELO_HEARTBEAT_TTL", "soon")
    with pytest.raises(ConfigError, match=r"^VELO_HEARTBEAT_TTL='soon': .*seconds a busy worker's lease"):
        settings.HEARTBEAT_TTL.get()
    monkeypatch.setenv("VELO_HEARTBEAT_TTL", "0")
    with pytest.raises(ConfigError, match="must be above 0"):
        settings.HEARTBEAT_TTL.get()


def test_defaults_that_depend_on_the_home_folder_follow_it(monkeypatch, tmp_path):
    monkeypatch.delenv("VELO_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert settings.STATE_DIR.get() == str(tmp_path / "velosiped")
    monkeypatch.setenv("VELO_MODEL_PREFIXES", " s3://b/models/ , /srv/models ")
    assert settings.MODEL_PREFIXES.get() == ("s3://b/models/", "/srv/models")
