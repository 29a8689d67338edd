"""The README stays true: its `velo` command lines parse with the real CLI, its make targets exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_infra import parse_velo, velo_argvs

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", README, flags=re.S)


def test_every_velo_command_in_the_readme_parses():
    argvs = [argv for block in shell_blocks() for argv in velo_argvs(block)]
    assert len(argvs) >= 6, "the README shows fewer velo commands than expected"
    for argv in argvs:
        parse_velo(argv, "README.md")


def test_the_two_newcomer_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", "\n".join(shell_blocks()), flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README runs `make {target}`, Makefile lacks it"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_stands_alone_in_a_clone():
    """No path outside the repository (`../shared/...`); every file it names is in the repository."""
    assert "../" not in README, "the README points outside the repository"
    named = set(re.findall(r"`((?:docs|scripts|infra|tests|bench|worker|dispatcher|velosiped)/[\w./-]*\w)`", README))
    assert named, "the README names no file of the repository"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"the README names files a clone does not have: {missing}"
