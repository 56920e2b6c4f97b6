"""Options for models that do not fit plainly: per-layer rematerialisation, gradient accumulation
(optax.MultiSteps) and bf16 compute over f32 params and optimizer state."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from deed_jax.config_defaults import training_defaults, validate
from deed_jax.errors import UserError
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.training.losses import exit_weights
from deed_jax.training.optimizer import make_optimizer
from deed_jax.training.train_step import init_train_state, make_train_step
from tests.conftest import random_inputs, randomize, tiny_config
from tests.training.configs import tiny_text_config


def _batch(config, rows, seed=0):
  encoder, decoder_ids = random_inputs(
    config, batch=rows, target_length=config.max_target_length, seed=seed
  )
  targets = np.roll(decoder_ids, -1, axis=1)
  return {
    **encoder,
    "decoder_input_ids": decoder_ids,
    "targets": targets,
    "target_mask": np.ones_like(targets),
  }


def _copy(tree):
  """A copy the train step may donate (it consumes its state argument)."""
  return jax.tree.map(lambda x: x.copy(), tree)


def _state(config, tx):
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=2, scale=0.2)
  return init_train_state(model, tx)


@pytest.mark.parametrize("encoder", ["text", "image"])
def test_rematerialised_layers_give_the_same_step(encoder):
  config = tiny_config(encoder=encoder, dropout_rate=0.1)
  tx = make_optimizer(training_defaults().optimizer, total_steps=10)
  graphdef, state = _state(config, tx)
  batch, weights = _batch(config, 4), exit_weights("deed", config.decoder_layers)
  plain = make_train_step(graphdef, tx, weights)
  remat = make_train_step(graphdef, tx, weights, remat=True)
  jaxpr = str(jax.make_jaxpr(remat)(state, batch, jax.random.key(3)))
  assert jaxpr.count("remat") + jaxpr.count("checkpoint") >= config.decoder_layers
  (a, metrics_a), (b, metrics_b) = (
    step(_copy(state), batch, jax.random.key(3)) for step in (plain, remat)
  )
  np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics_a["grad_norm"], metrics_b["grad_norm"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_two_accumulated_steps_update_like_one_step_of_the_double_batch():
  """Every target token counts (mask of ones), so the mean of two half-batch gradients is the
  double batch's gradient. Shown through the train step with SGD inside optax.MultiSteps (exact up to
  float sums; Adam's first step, ~lr * sign(g), would magnify float noise in near-zero gradients)."""
  config = tiny_config(dropout_rate=0.0)
  weights = exit_weights("deed", config.decoder_layers)
  first, second = _batch(config, 3, seed=1), _batch(config, 3, seed=2)
  double = {k: np.concatenate([first[k], second[k]]) for k in first}

  graphdef, state = _state(config, optax.sgd(0.1))
  once, _ = make_train_step(graphdef, optax.sgd(0.1), weights)(
    _copy(state), double, jax.random.key(0)
  )
  tx = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2).gradient_transformation()
  graphdef, state = _state(config, tx)
  step = make_train_step(graphdef, tx, weights)
  halfway, _ = step(_copy(state), first, jax.random.key(0))
  for x, y in zip(jax.tree.leaves(halfway.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(x, y)  # nothing applied before the k-th step
  twice, _ = step(_copy(halfway), second, jax.random.key(0))
  moved = 0
  for x, y, start in zip(
    jax.tree.leaves(twice.params), jax.tree.leaves(once.params), jax.tree.leaves(state.params)
  ):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    moved += not np.array_equal(x, start)
  assert moved > 10


def test_the_configured_optimizer_updates_once_per_accumulation():
  """make_optimizer(accumulate_steps=2): AdamW sees one update every 2 steps (its schedule, which
  counts AdamW's updates, is built over total_steps / 2 of them)."""
  options = training_defaults().optimizer
  params = {"w": np.ones((2, 2), np.float32)}
  tx = make_optimizer(options, total_steps=40, accumulate_steps=2)
  state = tx.init(params)
  for _ in range(4):
    _, state = tx.update({"w": np.full((2, 2), 0.5, np.float32)}, state, params)
  inner = state.inner_opt_state
  assert int(state.gradient_step) == 2 and int(inner[1][0].count) == 2  # AdamW's step counter


def test_bf16_compute_keeps_f32_params_and_optimizer_state():
  config = tiny_config(dtype="bfloat16")
  tx = make_optimizer(training_defaults().optimizer, total_steps=10)
  graphdef, state = _state(config, tx)
  state, metrics = make_train_step(graphdef, tx, exit_weights("deed", config.decoder_layers))(
    state, _batch(config, 4), jax.random.key(0)
  )
  assert np.isfinite(metrics["loss"])
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))} == {
    np.dtype("float32"),
    np.dtype("int32"),
  }


def test_accumulation_must_divide_the_steps(tfds_dir):
  config = tiny_text_config(tfds_dir, total_steps=5, gradient_accumulation_steps=2)
  with pytest.raises(
    UserError, match="total_steps=5 is not a multiple of config.gradient_accumulation_steps=2"
  ):
    validate(config)
  with pytest.raises(UserError, match="gradient_accumulation_steps=0 must be >= 1"):
    validate(tiny_text_config(tfds_dir, gradient_accumulation_steps=0))
