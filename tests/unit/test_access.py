"""The allow-lists (velosiped/access.py): a path is judged where it really is, a prefix is a folder."""

from __future__ import annotations

import os

import pytest

from velosiped import settings
from velosiped.access import check_output, check_path
from velosiped.errors import ConfigError


@pytest.fixture
def area(tmp_path, monkeypatch):
    """tmp/allowed (the only allowed prefix), tmp/secret beside it, and tmp/allowed2 whose name starts alike."""
    for name in ("allowed", "secret", "allowed2"):
        (tmp_path / name).mkdir()
    (tmp_path / "secret" / "s.csv").write_text("id\n1\n")
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(tmp_path / "allowed"))
    monkeypatch.delenv("VELO_MODEL_PREFIXES", raising=False)
    return tmp_path


def refusal(uri, setting=settings.ALLOWED_PREFIXES) -> str:
    with pytest.raises(ConfigError) as e:
        check_path(str(uri), setting)
    return str(e.value)


def test_without_prefixes_any_absolute_path_passes_as_given(tmp_path, monkeypatch):
    """Nothing to be under: the path is not resolved (one syscall a segment, per file of a job)."""
    monkeypatch.delenv("VELO_ALLOWED_PREFIXES", raising=False)
    (tmp_path / "link").symlink_to(tmp_path)
    assert check_path(str(tmp_path / "link" / "x.csv")) == str(tmp_path / "link" / "x.csv")
    assert check_path("s3://b/k/x.csv") == "s3://b/k/x.csv"


@pytest.mark.parametrize("uri", ["relative/x.csv", "/a/../b.csv", "s3://b/allowed/../secret/s.csv"])
def test_relative_paths_and_dotdot_segments_are_refused(uri, monkeypatch):
    monkeypatch.delenv("VELO_ALLOWED_PREFIXES", raising=False)
    assert "relative or '..' paths are refused" in refusal(uri)


def test_a_prefix_is_a_folder_not_the_start_of_a_name(area):
    assert check_path(str(area / "allowed" / "x.csv")) == str(area / "allowed" / "x.csv")
    assert check_path(str(area / "allowed")) == str(area / "allowed")
    assert "path outside VELO_ALLOWED_PREFIXES" in refusal(area / "allowed2" / "x.csv")


def test_a_symlinked_file_pointing_outside_is_refused_naming_where_it_resolves(area):
    (area / "allowed" / "x.csv").symlink_to("../secret/s.csv")
    reason = refusal(area / "allowed" / "x.csv")
    real = os.path.realpath(area / "secret" / "s.csv")
    assert f"{area / 'allowed' / 'x.csv'}: resolves to {real}, outside VELO_ALLOWED_PREFIXES" in reason
    assert "\n" not in reason


def test_a_symlinked_folder_in_the_middle_of_a_path_not_made_yet_is_refused(area):
    (area / "allowed" / "out").symlink_to(area / "secret")
    assert "resolves to" in refusal(area / "allowed" / "out" / "new" / "x.out.csv")
    assert "resolves to" in refusal(area / "allowed" / "out" / "x.out.csv.velo-parts" / "g" / "")


def test_a_symlink_climbing_out_with_dotdot_in_its_target_is_refused(area):
    (area / "allowed" / "up").symlink_to("../..")
    assert "resolves to" in refusal(area / "allowed" / "up" / area.name / "secret" / "s.csv")


def test_a_symlink_staying_inside_is_allowed(area):
    (area / "allowed" / "sub").mkdir()
    (area / "allowed" / "sub" / "real.csv").write_text("id\n")
    (area / "allowed" / "x.csv").symlink_to("sub/real.csv")
    assert check_path(str(area / "allowed" / "x.csv")) == os.path.realpath(area / "allowed" / "sub" / "real.csv")


def test_a_prefix_under_a_symlinked_folder_still_works_either_way(area, monkeypatch):
    # Given a prefix named through a symlink (like /tmp -> /private/tmp on macOS)
    (area / "alias").symlink_to(area / "allowed")
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(area / "alias"))
    # Then a path named either way is inside
    check_path(str(area / "allowed" / "x.csv"))
    check_path(str(area / "alias" / "x.csv"))
    # And a path named through the real folder, with the prefix given as the real one
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(area / "allowed") + "/")
    check_path(str(area / "alias" / "x.csv"))
    assert "outside" in refusal(area / "secret" / "s.csv")


def test_models_are_judged_against_velo_model_prefixes(area, monkeypatch):
    (area / "models").mkdir()
    (area / "elsewhere").mkdir()
    (area / "elsewhere" / "trap.joblib").write_bytes(b"x")
    (area / "models" / "m.joblib").symlink_to(area / "elsewhere" / "trap.joblib")
    monkeypatch.setenv("VELO_MODEL_PREFIXES", str(area / "models"))
    reason = refusal(area / "models" / "m.joblib", settings.MODEL_PREFIXES)
    assert "resolves to" in reason and "outside VELO_MODEL_PREFIXES" in reason
    assert "model outside VELO_MODEL_PREFIXES" in refusal(area / "elsewhere" / "trap.joblib", settings.MODEL_PREFIXES)


def test_s3_keys_are_judged_as_folders(monkeypatch):
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", "s3://b/allowed")
    assert check_path("s3://b/allowed/x.csv") == "s3://b/allowed/x.csv"
    assert "path outside VELO_ALLOWED_PREFIXES" in refusal("s3://b/allowed2/x.csv")
    assert "path outside" in refusal("s3://other/allowed/x.csv")


@pytest.mark.parametrize("beside", [".velo.json", ".error.json"])
def test_an_outputs_sidecar_symlinked_outside_refuses_the_output(area, beside):
    (area / "allowed" / f"x.out.csv{beside}").symlink_to(area / "secret" / "s.csv")
    check_path(str(area / "allowed" / "x.out.csv"))
    with pytest.raises(ConfigError, match="resolves to"):
        check_output(str(area / "allowed" / "x.out.csv"))
