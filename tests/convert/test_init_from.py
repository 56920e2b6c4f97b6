"""Training starts from a converted checkpoint (`init_from`), and the result goes back to HF."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
import torch
import transformers as T

from deed_jax import checkpoint
from deed_jax.config_defaults import model_config
from deed_jax.convert import hf_to_orbax, orbax_to_hf
from deed_jax.train import train_and_evaluate
from deed_jax.workdir import read_model_config
from tests.training.configs import tiny_text_config


def _byte_vocab_bart(directory) -> None:
  """A BART whose ids fit the task's byte tokenizer (pad 0, start 1, eos 2, 259 ids)."""
  torch.manual_seed(0)
  config = T.BartConfig(
    vocab_size=259,
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
    forced_eos_token_id=None,
  )
  T.BartForConditionalGeneration(config).save_pretrained(directory)


def _config(tfds_dir, init_from, **model):
  config = tiny_text_config(tfds_dir, total_steps=2, checkpoint_every_steps=2)
  config.model = ml_collections.ConfigDict(model)
  config.init_from = init_from
  return config


def test_training_starts_from_the_converted_model_and_exports_back(tmp_path, tfds_dir):
  _byte_vocab_bart(tmp_path / "hf")
  converted = str(tmp_path / "converted")
  hf_to_orbax(str(tmp_path / "hf"), converted)
  config = _config(tfds_dir, converted)
  config.optimizer.learning_rate = 0.0  # so the trained params must equal the converted ones
  workdir = str(tmp_path / "run")
  results = train_and_evaluate(config, workdir, progress=False)
  assert results["step"] == 2 and len(results["exit_exact_match"]) == 2
  start = checkpoint.flat_params(
    checkpoint.restore_params(
      converted, checkpoint.abstract_params(read_model_config(converted))[1]
    )
  )
  trained_model = checkpoint.load_model(workdir)
  assert trained_model.config == read_model_config(converted)
  trained = checkpoint.flat_params(
    checkpoint.restore_params(workdir, checkpoint.abstract_params(trained_model.config)[1])
  )
  assert sorted(trained) == sorted(start) and len(start) > 30
  for key in start:
    np.testing.assert_array_equal(np.asarray(trained[key]), np.asarray(start[key]))
  assert os.path.isfile(os.path.join(workdir, "hf_source.json"))  # travelled with the weights
  orbax_to_hf(workdir, str(tmp_path / "served"))
  served = T.BartForConditionalGeneration.from_pretrained(str(tmp_path / "served")).eval()
  ids = np.array([[5, 9, 30, 2, 0]], np.int64)
  with torch.no_grad():
    expected = served(
      input_ids=torch.from_numpy(ids),
      attention_mask=torch.from_numpy((ids > 0) * 1),
      decoder_input_ids=torch.tensor([[1, 7, 8]]),
    ).logits.numpy()
  ours = np.asarray(
    trained_model({"input_ids": ids, "attention_mask": (ids > 0) * 1}, np.array([[1, 7, 8]]))[-1]
  )
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_init_from_refuses_architecture_changes(tmp_path, tfds_dir):
  _byte_vocab_bart(tmp_path / "hf")
  hf_to_orbax(str(tmp_path / "hf"), str(tmp_path / "converted"))
  assert (
    model_config(_config(tfds_dir, str(tmp_path / "converted"), dropout_rate=0.1)).dropout_rate
    == 0.1
  )
  with pytest.raises(ValueError, match=r"sets \['d_model'\] to other values"):
    model_config(_config(tfds_dir, str(tmp_path / "converted"), d_model=64))
  with pytest.raises(FileNotFoundError, match="no model_config.json"):
    model_config(_config(tfds_dir, str(tmp_path / "nothing")))
