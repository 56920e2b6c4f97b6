"""Checkpoints that do not fit are refused with every problem listed, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deed_jax import checkpoint
from deed_jax.convert import SUPPORTED, ConversionError, hf_to_orbax, orbax_to_hf
from deed_jax.data.tokenizer import get_tokenizer
from tests.convert import hf_models


@pytest.fixture
def bart_dir(tmp_path):
  path = tmp_path / "hf"
  hf_models.build("bart").save_pretrained(path)
  return path


def _edit_weights(directory, edit):
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def _assert_nothing_written(parent, name="out"):
  assert not (parent / name).exists()
  assert not [p for p in os.listdir(parent) if ".partial-" in p]


def test_missing_unexpected_and_misshaped_keys_are_all_listed(bart_dir, tmp_path):
  def edit(tensors):
    del tensors["model.decoder.layers.1.fc2.bias"]
    tensors["model.decoder.extra_head.weight"] = torch.zeros(3)
    tensors["model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 31)

  _edit_weights(bart_dir, edit)
  with pytest.raises(ConversionError) as error:
    hf_to_orbax(str(bart_dir), str(tmp_path / "out"))
  message = str(error.value)
  assert "1 missing keys: model.decoder.layers.1.fc2.bias" in message
  assert "1 unexpected keys: model.decoder.extra_head.weight" in message
  assert "model.encoder.layers.0.self_attn.q_proj.weight (32, 31)" in message
  assert "expected (32, 4, 8)" in message
  _assert_nothing_written(tmp_path)


def test_untied_copy_of_a_tied_embedding_is_refused(bart_dir, tmp_path):
  def edit(tensors):
    tensors["lm_head.weight"] = tensors["model.shared.weight"] + 1.0

  _edit_weights(bart_dir, edit)
  with pytest.raises(
    ConversionError, match="tied keys that differ: lm_head.weight != model.shared.weight"
  ):
    hf_to_orbax(str(bart_dir), str(tmp_path / "out"))
  _assert_nothing_written(tmp_path)


def test_unsupported_architectures_are_named(bart_dir, tmp_path):
  config_path = bart_dir / "config.json"
  config = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(ConversionError) as error:
    hf_to_orbax(str(bart_dir), str(tmp_path / "out"))
  assert "GPT2LMHeadModel" in str(error.value)
  for name in SUPPORTED:
    assert name in str(error.value)
  _assert_nothing_written(tmp_path)


def test_unsupported_vision_encoder_is_named(tmp_path):
  hf_models.build("vit_bart").save_pretrained(tmp_path / "hf")
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  config["encoder"]["model_type"] = "swin"
  (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConversionError, match="'swin' encoder"):
    hf_to_orbax(str(tmp_path / "hf"), str(tmp_path / "out"))
  _assert_nothing_written(tmp_path)


class _Payload:
  """Unpickling this would create a file: weights_only loading must never run it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def _bin_dir(tmp_path, state) -> str:
  directory = tmp_path / "bin"
  hf_models.build("bart").save_pretrained(directory)
  os.remove(directory / "model.safetensors")
  torch.save(state, directory / "pytorch_model.bin")
  return str(directory)


def test_bin_with_pickled_objects_is_refused_without_running_them(tmp_path):
  marker = tmp_path / "payload_ran"
  source = _bin_dir(
    tmp_path, {"model.shared.weight": torch.zeros(2), "evil": _Payload(str(marker))}
  )
  with pytest.raises(ValueError, match="weights_only=True"):
    hf_to_orbax(source, str(tmp_path / "out"))
  assert not marker.exists()
  _assert_nothing_written(tmp_path)


def test_bin_with_non_tensor_entries_is_refused(tmp_path):
  source = _bin_dir(tmp_path, {"model.shared.weight": torch.zeros(2), "step": 3})
  with pytest.raises(ValueError, match=r"non-tensor entries: step \(int\)"):
    hf_to_orbax(source, str(tmp_path / "out"))
  _assert_nothing_written(tmp_path)


def test_existing_outputs_are_never_written_into(bart_dir, tmp_path):
  occupied = tmp_path / "occupied"
  occupied.mkdir()
  (occupied / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not an empty directory"):
    hf_to_orbax(str(bart_dir), str(occupied))
  assert os.listdir(occupied) == ["keep.txt"] and (occupied / "keep.txt").read_text() == "mine"
  hf_to_orbax(str(bart_dir), str(tmp_path / "orbax"))
  with pytest.raises(FileExistsError):
    orbax_to_hf(str(tmp_path / "orbax"), str(occupied))
  assert os.listdir(occupied) == ["keep.txt"]


def test_export_needs_a_converted_workdir(tmp_path, bart_dir):
  hf_to_orbax(str(bart_dir), str(tmp_path / "orbax"))
  os.remove(tmp_path / "orbax" / "hf_source.json")
  with pytest.raises(FileNotFoundError, match="hf_source.json"):
    orbax_to_hf(str(tmp_path / "orbax"), str(tmp_path / "out"))
  _assert_nothing_written(tmp_path)


def test_cli_both_ways_with_the_checkpoints_own_tokenizer(tmp_path, bart_dir):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top

  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(57)}}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(bart_dir / "tokenizer.json"))
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = lambda *args: subprocess.run(
    [sys.executable, "-m", "deed_jax.convert", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  result = run(
    "--source", str(bart_dir), "--workdir", str(tmp_path / "orbax"), "--adapter", "linear"
  )
  assert result.returncode == 0, result.stderr
  model = checkpoint.load_model(str(tmp_path / "orbax"))
  assert model.config.adapter == "linear" and model.config.decoder_layers == 3
  ours = get_tokenizer(str(tmp_path / "orbax"))  # the copied tokenizer.json, read from the workdir
  assert ours.encode("w4 w17 w9") == tokenizer.encode("w4 w17 w9").ids == [7, 20, 12]
  assert (ours.pad_id, ours.bos_id, ours.eos_id) == (1, 0, 2)
  result = run("--workdir", str(tmp_path / "orbax"), "--to_hf", str(tmp_path / "back"))
  assert result.returncode == 0, result.stderr
  assert sorted(load_file(str(tmp_path / "back" / "model.safetensors"))) == sorted(
    load_file(str(bart_dir / "model.safetensors"))
  )
  assert (tmp_path / "back" / "tokenizer.json").read_text() == (
    bart_dir / "tokenizer.json"
  ).read_text()
  result = run("--workdir", str(tmp_path / "x"))  # neither --source nor --to_hf
  assert result.returncode != 0 and "exactly one of --source" in result.stderr
  assert np.asarray(model.token_embedding.embedding[...]).shape == (60, 32)
