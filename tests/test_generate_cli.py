"""`python -m deed_jax.generate` on a trained text workdir: what it prints is what the naive reference
decodes, after a prompt or not; bad input is one error line."""

from __future__ import annotations

import numpy as np
import pytest

from deed_jax import checkpoint
from deed_jax.data import pipeline
from deed_jax.decode_input import decode_input
from deed_jax.decoding.reference import greedy_reference
from deed_jax.workdir import workdir_decode_config
from tests.test_cli import _one_line_error, _run
from tests.training.configs import tiny_text_config, train_tiny

SOURCE = "? city | name   : Ann Lee | city   : Oslo"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
  return train_tiny(tmp_path_factory, tfds_dir, "generate_cli", 20)


@pytest.mark.parametrize("prompt", [None, "Os"])
def test_run_decodes_what_the_naive_reference_decodes(trained, tfds_dir, prompt):
  result = decode_input(
    trained, text=SOURCE, prompt=prompt, overrides={"exit_mode": "static"}, repeats=2
  )
  model = checkpoint.load_model(trained)
  tokenizer = pipeline.task_tokenizer(tiny_text_config(tfds_dir).task)
  ids = tokenizer.encode_source(SOURCE, model.config.max_source_length)
  inputs = {
    "input_ids": np.array([ids + [0] * (model.config.max_source_length - len(ids))], np.int32),
    "attention_mask": np.array(
      [[1] * len(ids) + [0] * (model.config.max_source_length - len(ids))]
    ),
  }
  prompts = None if prompt is None else [tokenizer.encode(prompt)]
  length = 1 if prompt is None else len(prompts[0])
  # The workdir has no generation settings: DecodeConfig's 32 new tokens, cut to the decoder's room.
  room = model.config.max_target_length - length + 1
  config = workdir_decode_config(trained, exit_mode="static", max_new_tokens=room)
  tokens = np.asarray(greedy_reference(model, inputs, config, prompt=prompts).tokens)[0]
  assert result["text"] == tokenizer.decode(tokens)
  layers = model.config.decoder_layers
  assert [l for _, l in result["tokens"]] == [layers] * int((tokens != 0).sum())
  assert result["decode_ms"] > 0 and result["config"].max_new_tokens == room


def test_the_command_prints_text_exits_and_latency(trained):
  run = _run("deed_jax.generate", f"--workdir={trained}", f"--text={SOURCE}", "--repeats=1")
  assert run.returncode == 0, run.stderr[-2000:]
  text, tokens, timing = run.stdout.splitlines()[-3:]
  assert tokens.startswith("tokens (exit layer): ")
  assert "ms (median of 1 calls" in timing and "greedy, deed, threshold 0.9" in timing


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--image=/nonexistent.png"], "reads text: give --text"),
    (["--text=x", "--config.exit_mod=static"], "--config.exit_mod=static: the config has no"),
    (["--text=x", "--prompt="], "--prompt is empty"),
    (["--text=x", "--config.exit_mode=fast"], "exit_mode='fast' is not one of"),
    (["--text=x", "--config.max_new_tokens=500"], "max_new_tokens=500 exceeds"),
  ],
)
def test_bad_input_is_one_line(trained, args, expected):
  _one_line_error(_run("deed_jax.generate", f"--workdir={trained}", *args), expected)


def test_a_workdir_without_a_model_is_one_line(tmp_path):
  _one_line_error(_run("deed_jax.generate", f"--workdir={tmp_path}", "--text=x"), "model_config")
