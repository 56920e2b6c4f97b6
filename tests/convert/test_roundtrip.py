"""HF -> orbax -> HF reproduces every tensor exactly; a model changed on our side is served by HF."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from deed_jax import checkpoint
from deed_jax.convert import (
  ConversionError,
  ConvertOptions,
  convert_params,
  hf_to_orbax,
  orbax_to_hf,
)
from deed_jax.convert.import_hf import EXIT_MODULES_FILE
from tests.convert import hf_models


def _assert_same_tensors(expected_dir: str, actual_dir: str) -> int:
  expected = load_file(os.path.join(expected_dir, "model.safetensors"))
  actual = load_file(os.path.join(actual_dir, "model.safetensors"))
  assert sorted(actual) == sorted(expected)
  for key, tensor in expected.items():
    assert actual[key].dtype == tensor.dtype, key
    assert torch.equal(actual[key], tensor), key
  return len(expected)


@pytest.mark.parametrize("name", sorted(hf_models.BUILDERS))
def test_hf_orbax_hf_reproduces_every_tensor(converted, name, tmp_path):
  c = converted(name)
  orbax_to_hf(c.workdir, str(tmp_path / "hf"))
  assert _assert_same_tensors(c.hf_dir, str(tmp_path / "hf")) > 20
  with open(os.path.join(c.hf_dir, "config.json")) as f, open(tmp_path / "hf" / "config.json") as g:
    assert json.load(g) == json.load(f)
  adapters = load_numpy(str(tmp_path / "hf" / EXIT_MODULES_FILE))
  assert (
    len(adapters) == 4 * c.model.config.decoder_layers
  )  # bottleneck: down, down_bias, up, up_bias
  # HF loads the exported directory exactly as it loads the source directory. (Compared with a reload
  # of the source, not the in-memory model: transformers 4.57 reloads an untied-head BART it saved
  # itself with fresh encoder/decoder embeddings, since save_pretrained drops them as tied copies.)
  inputs = hf_models.random_inputs(c.hf_model)
  decoder_ids = torch.tensor([[2, 5, 7, 9]] * 3)
  logits = []
  for directory in (c.hf_dir, str(tmp_path / "hf")):
    torch.manual_seed(0)  # the same fresh init for anything HF leaves uninitialised
    with torch.no_grad():
      reloaded = type(c.hf_model).from_pretrained(directory).eval()
      logits.append(reloaded(**inputs, decoder_input_ids=decoder_ids).logits.numpy())
  np.testing.assert_array_equal(logits[1], logits[0])


def test_bfloat16_source_round_trips_in_its_dtype(tmp_path):
  model = hf_models.build("mbart").to(torch.bfloat16)
  model.save_pretrained(tmp_path / "hf")
  hf_to_orbax(str(tmp_path / "hf"), str(tmp_path / "orbax"))
  assert checkpoint.load_model(str(tmp_path / "orbax")).config.param_dtype == "float32"
  orbax_to_hf(str(tmp_path / "orbax"), str(tmp_path / "back"))
  _assert_same_tensors(str(tmp_path / "hf"), str(tmp_path / "back"))
  back = load_file(str(tmp_path / "back" / "model.safetensors"))
  assert back["model.shared.weight"].dtype == torch.bfloat16


def test_pytorch_bin_converts_like_safetensors(tmp_path):
  model = hf_models.build("t5_v1_1")
  model.save_pretrained(tmp_path / "st")
  model.save_pretrained(tmp_path / "bin", safe_serialization=False)
  assert os.path.isfile(tmp_path / "bin" / "pytorch_model.bin")
  config_st, params_st, _, _ = convert_params(str(tmp_path / "st"))
  config_bin, params_bin, _, _ = convert_params(str(tmp_path / "bin"))
  assert config_bin == config_st
  flat_st, flat_bin = checkpoint.flat_params(params_st), checkpoint.flat_params(params_bin)
  assert sorted(flat_bin) == sorted(flat_st)
  for key in flat_st:
    np.testing.assert_array_equal(flat_bin[key], flat_st[key])


def test_model_changed_here_is_served_by_hf(tmp_path):
  """Fine-tuning stand-in: every converted weight changes (a new step in the workdir); the exported HF
  model then computes our final exit exactly. Non-identity adapters are ours alone and are zeroed."""
  source = hf_models.build("t5_v1_1")
  source.save_pretrained(tmp_path / "hf")
  workdir = str(tmp_path / "orbax")
  hf_to_orbax(str(tmp_path / "hf"), workdir, ConvertOptions(adapter="none"))
  model = checkpoint.load_model(workdir)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  rng = np.random.default_rng(0)
  params = jax_tree_map(
    lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params
  )
  checkpoint.save_params(workdir, model.config, params, step=1)
  changed = checkpoint.load_model(workdir)
  orbax_to_hf(workdir, str(tmp_path / "exported"))
  served = T.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "exported")).eval()
  inputs = hf_models.random_inputs(source)
  decoder_ids = torch.tensor([[0, 5, 7, 9, 11]] * 3)
  with torch.no_grad():
    expected = served(**inputs, decoder_input_ids=decoder_ids).logits.numpy()
    before = source(**inputs, decoder_input_ids=decoder_ids).logits.numpy()
  ours = np.asarray(changed(hf_models.to_ours(inputs), decoder_ids.numpy())[-1])
  assert np.abs(expected - before).max() > 1e-2  # the export carries the change
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_export_warns_when_the_last_adapter_moved(tmp_path):
  hf_models.build("bart").save_pretrained(tmp_path / "hf")
  workdir = str(tmp_path / "orbax")
  config = hf_to_orbax(str(tmp_path / "hf"), workdir, ConvertOptions(adapter="bottleneck"))
  with warnings.catch_warnings(record=True) as caught:  # as converted: the identity, no warning
    warnings.simplefilter("always")
    orbax_to_hf(workdir, str(tmp_path / "identity"))
  assert not [w for w in caught if "last exit adapter" in str(w.message)]
  params = nnx.to_pure_dict(nnx.state(checkpoint.load_model(workdir), nnx.Param))
  last = config.decoder_layers - 1
  adapter = params["decoder"]["adapters"][last]
  adapter["up_bias"] = np.full_like(adapter["up_bias"], 0.5)
  checkpoint.save_params(workdir, config, params, step=1)
  with pytest.warns(UserWarning, match="last exit adapter is not the identity"):
    orbax_to_hf(workdir, str(tmp_path / "moved"))


def test_exit_modules_come_back_when_an_exported_directory_is_converted_again(tmp_path):
  """Trained exit modules (every adapter and an mlp exit classifier changed here) survive
  orbax -> HF -> orbax bit for bit, with every HF tensor; asking for other exit modules than the
  exported directory holds is refused before anything is written."""
  hf_models.build("bart").save_pretrained(tmp_path / "hf")
  workdir = str(tmp_path / "orbax")
  config = hf_to_orbax(
    str(tmp_path / "hf"), workdir, ConvertOptions(exit_classifier="mlp", exit_classifier_dim=8)
  )
  assert config.exit_classifier == "mlp" and config.adapter == "bottleneck"
  params = nnx.to_pure_dict(nnx.state(checkpoint.load_model(workdir), nnx.Param))
  rng = np.random.default_rng(0)
  changed = jax_tree_map(
    lambda x: np.asarray(x) + rng.standard_normal(x.shape).astype(x.dtype), params
  )
  checkpoint.save_params(workdir, config, changed, step=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the last adapter moved (tested above)
    orbax_to_hf(workdir, str(tmp_path / "exported"))
  exported = load_numpy(str(tmp_path / "exported" / EXIT_MODULES_FILE))
  assert {k.split("/")[1] for k in exported} == {"adapters", "exit_classifier"}
  again = str(tmp_path / "again")
  assert hf_to_orbax(str(tmp_path / "exported"), again) == config
  expected = checkpoint.flat_params(changed)
  restored = checkpoint.flat_params(
    nnx.to_pure_dict(nnx.state(checkpoint.load_model(again), nnx.Param))
  )
  assert sorted(restored) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(restored[key]), value, err_msg=key)
  with pytest.raises(ConversionError, match="exit_classifier='linear' was asked for.*'mlp'"):
    hf_to_orbax(
      str(tmp_path / "exported"),
      str(tmp_path / "refused"),
      ConvertOptions(exit_classifier="linear"),
    )
  assert not os.path.exists(tmp_path / "refused")


def jax_tree_map(fn, tree):
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree.map(fn, tree)
