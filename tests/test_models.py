"""Model loading never writes to or removes a folder the user names (issue 14, data loss)."""

from __future__ import annotations

import pytest

from goracs.models import ModelError, load_model, smollm2_path


def test_a_user_model_path_is_read_never_written(tmp_path):
    folder = tmp_path / "my_models"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="holds no converted SmolLM2 checkpoint.*left untouched"):
        load_model("smollm2_135m", path=str(folder))
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"
    typo = tmp_path / "my_modles"
    with pytest.raises(ModelError, match="does not exist"):
        smollm2_path(typo)
    assert not typo.exists()


def test_a_converted_copy_given_as_path_is_used_as_is(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert smollm2_path(folder) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
