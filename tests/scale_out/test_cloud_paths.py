"""Workdirs on a bucket: every workdir file the trainer touches outside orbax's checkpoints goes
through etils.epath, so a gs:// workdir works. Tested with a stand-in for GCS: an fsspec filesystem that
keeps `gs://bucket/...` under a local folder (what epath uses for gs:// when gcsfs is installed)."""

from __future__ import annotations

import json

import pytest
from etils.epath import backend
from fsspec.implementations.local import LocalFileSystem

from deed_jax import workdir
from tests.conftest import tiny_config


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  root = tmp_path / "gcs"
  root.mkdir()

  class FakeGCS(LocalFileSystem):
    """gs://bucket/key <-> <root>/bucket/key."""

    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
      path = str(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          path = str(root / path[len(prefix) :])
      return super()._strip_protocol(path)

  # Object storage has no directories: writing a key needs no parent to exist (auto_mkdir).
  monkeypatch.setattr(
    backend.fsspec_backend, "_get_filesystem", lambda name: FakeGCS(auto_mkdir=True)
  )
  return root


def test_workdir_files_on_a_bucket(fake_gcs, tmp_path):
  url = "gs://bucket/runs/forms"
  assert str(workdir.absolute(url)) == url  # never made relative to the current directory
  assert str(workdir.absolute("runs/x")).startswith("/")  # local paths are made absolute
  workdir.write_json(url, workdir.TRAIN_CONFIG_FILE, {"seed": 3})
  assert json.loads((fake_gcs / "bucket/runs/forms/train_config.json").read_text()) == {"seed": 3}
  assert workdir.read_json(url, workdir.TRAIN_CONFIG_FILE) == {"seed": 3}
  workdir.write_json(url, workdir.TRAIN_CONFIG_FILE, {"seed": 4})  # replaced whole
  assert workdir.read_json(url, workdir.TRAIN_CONFIG_FILE) == {"seed": 4}

  # (The checkpoints themselves are orbax's: it opens gs:// with google-cloud-storage and
  # tensorstore, which need the real service; `pip install deed-jax[gcs]`.)
  config = tiny_config()
  workdir.model_config_path(url).write_text(config.to_json())
  assert workdir.read_model_config(url) == config
  with pytest.raises(ValueError, match="d_model: 32 in the workdir vs 48"):
    workdir.check_compatible_workdir(url, tiny_config(d_model=48))

  source = tmp_path / "hf"
  source.mkdir()
  (source / "tokenizer.json").write_text("{}")
  assert workdir.copy_side_files(str(source), url) == ["tokenizer.json"]
  assert (fake_gcs / "bucket/runs/forms/tokenizer.json").read_text() == "{}"
