"""A tiny model memorises a handful of examples: 100% greedy exact match at the final exit."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

from deed_jax.decoding.reference import greedy_at_exit
from deed_jax.evaluation.per_exit import exact_match
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.training.losses import exit_weights
from deed_jax.training.optimizer import make_optimizer
from deed_jax.training.train_step import init_train_state, make_train_step, merge_model
from tests.conftest import tiny_config


def test_tiny_model_overfits_a_handful_of_examples():
  config = tiny_config(vocab_size=20, d_model=64, d_ff=128, decoder_layers=3, max_target_length=8)
  rng = np.random.default_rng(0)
  num_examples, source_length = 6, 12
  input_ids = rng.integers(3, 20, size=(num_examples, source_length)).astype(np.int32)
  answers = [rng.integers(3, 20, size=rng.integers(2, 7)).tolist() for _ in range(num_examples)]
  targets = np.zeros((num_examples, 8), np.int32)
  decoder_ids = np.zeros((num_examples, 8), np.int32)
  mask = np.zeros((num_examples, 8), np.int32)
  for i, answer in enumerate(answers):
    targets[i, : len(answer) + 1] = answer + [config.eos_id]
    decoder_ids[i, : len(answer) + 1] = [config.bos_id] + answer
    mask[i, : len(answer) + 1] = 1
  batch = {
    "input_ids": input_ids,
    "attention_mask": np.ones_like(input_ids),
    "decoder_input_ids": decoder_ids,
    "targets": targets,
    "target_mask": mask,
  }

  opt = ml_collections.ConfigDict(
    dict(
      learning_rate=3e-3,
      warmup_steps=20,
      end_lr_factor=0.1,
      weight_decay=0.0,
      clip_norm=1.0,
      b1=0.9,
      b2=0.98,
    )
  )
  steps = 150  # memorised by step ~50 here (loss at 1% of the first); 3x that for other machines
  tx = make_optimizer(opt, steps)
  graphdef, state = init_train_state(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), tx)
  train_step = make_train_step(graphdef, tx, exit_weights("deed", config.decoder_layers))
  first_loss = None
  for _ in range(steps):
    state, metrics = train_step(state, batch, jax.random.key(0))
    first_loss = first_loss if first_loss is not None else float(metrics["loss"])
  model = merge_model(graphdef, state.params)
  tokens = greedy_at_exit(
    model,
    {"input_ids": input_ids, "attention_mask": batch["attention_mask"]},
    config.decoder_layers,
    8,
  )
  assert np.asarray(exact_match(tokens, targets, mask)).all(), (np.asarray(tokens), targets)
  assert float(metrics["exit_token_accuracy"][-1]) == 1.0
  assert float(metrics["loss"]) < 0.05 * first_loss
