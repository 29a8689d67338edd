"""The import rule, so the layout cannot drift back: ``velosiped`` (the shared core) imports neither
side, ``worker`` never imports ``dispatcher``, and ``dispatcher`` imports ``worker`` only inside the
commands that run workers (``velo run``, ``velo worker``) and in ``dispatcher/serve/``, which scores
online with the workers' own model loading and scoring (and is itself imported only by ``velo serve``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUNS_WORKERS = {"run", "worker", "local_workers", "redis_and_model", "serve"}
"""Functions of dispatcher/cli.py that start workers (or serve), so may import them."""

SCORES_LIKE_A_WORKER = {("profile.py", "profile")}
"""Functions elsewhere in dispatcher/ that score files on the workers' code path (`velo profile`),
importing it inside themselves."""


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module imported, name of the top-level function importing it, None at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None:
                name = child.name
            if isinstance(child, ast.Import):
                found.extend((a.name, name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, name))
            visit(child, name)

    visit(tree, None)
    return found


def modules(package: str) -> list[Path]:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths, f"no modules under {package}/"
    return paths


def top(module: str) -> str:
    return module.split(".")[0]


def test_velosiped_imports_neither_side():
    # The Python API (api.py) is the core's one door into the sides: inside its functions only
    bad = [
        (p.name, m)
        for p in modules("velosiped")
        for m, f in imports(p)
        if top(m) in {"dispatcher", "worker"} and not (p.name == "api.py" and f is not None)
    ]
    assert not bad, f"the shared core imports a side: {bad}"


def test_worker_never_imports_the_dispatcher():
    bad = [(p.name, m) for p in modules("worker") for m, _ in imports(p) if top(m) == "dispatcher"]
    assert not bad, f"worker imports dispatcher: {bad}"


def test_dispatcher_imports_worker_only_where_a_command_runs_workers():
    bad = [
        (p.name, m, f)
        for p in modules("dispatcher")
        for m, f in imports(p)
        if top(m) == "worker"
        and not (p.name == "cli.py" and f in RUNS_WORKERS)
        and (p.name, f) not in SCORES_LIKE_A_WORKER
        and p.parent.name != "serve"
    ]
    assert not bad, f"dispatcher imports worker outside the commands that run workers: {bad}"


def test_only_velo_serve_imports_the_server():
    bad = [
        (p.name, m, f)
        for p in modules("dispatcher")
        for m, f in imports(p)
        if m.startswith("dispatcher.serve") and p.parent.name != "serve" and not (p.name == "cli.py" and f == "serve")
    ]
    assert not bad, f"dispatcher imports its server outside `velo serve`: {bad}"
