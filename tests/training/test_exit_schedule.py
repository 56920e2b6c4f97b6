"""Sampled exit supervision: `random` is unbiased (the mean of many sampled losses of the real train
objective equals the full deep-supervision loss on a fixed batch), `rotate` covers every exit within
its period and weighs them evenly over it, draws follow the step (so a resumed run draws the same),
and the sampled train step compiles once and trains the exit classifier on the exits it draws."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from deed_jax.exit_metrics import exit_metrics
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.training.exit_schedule import ExitSampling, supervised_exits
from deed_jax.training.losses import exit_weights
from deed_jax.training.train_step import (
  init_train_state,
  make_loss_fn,
  make_train_step,
  split_model,
)
from tests.conftest import random_inputs, randomize, tiny_config

LAYERS = 4


def _model_and_batch(**overrides):
  config = tiny_config(**{"decoder_layers": LAYERS, "dropout_rate": 0.0, **overrides})
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=3, scale=0.3)
  encoder_inputs, decoder_ids = random_inputs(config, batch=3, target_length=6)
  batch = {
    **encoder_inputs,
    "decoder_input_ids": decoder_ids,
    "targets": np.roll(decoder_ids, -1, axis=1),
    "target_mask": np.ones_like(decoder_ids),
  }
  return model, batch


@pytest.mark.parametrize("mode", ["deed", "linear"])
def test_random_sampling_is_unbiased_for_the_real_objective(mode):
  model, batch = _model_and_batch()
  graphdef, params = split_model(model)
  weights = exit_weights(mode, LAYERS)
  key = jax.random.key(0)
  full, full_metrics = make_loss_fn(graphdef, weights)(params, batch, jnp.int32(0), key)
  sampled_fn = jax.jit(make_loss_fn(graphdef, weights, exit_sampling=ExitSampling(1, "random")))
  draws = np.array(
    [
      float(sampled_fn(params, batch, jnp.int32(step), jax.random.fold_in(key, step))[0])
      for step in range(600)
    ]
  )
  # The exits' losses differ, so a draw's loss depends on which exit it picked; without the
  # (L - 1) / k factor the mean would sit at final + (mean of the others) / 3 * weight, far away.
  per_exit = np.asarray(full_metrics.loss)
  assert len(set(np.round(draws, 5))) == LAYERS - 1
  standard_error = draws.std(ddof=1) / math.sqrt(len(draws))
  assert abs(draws.mean() - float(full)) < 4 * standard_error, (draws.mean(), float(full), per_exit)


@pytest.mark.parametrize("layers, k", [(4, 1), (5, 2), (10, 2), (10, 3), (10, 9)])
def test_rotate_covers_every_exit_within_its_period_and_weighs_them_evenly(layers, k):
  sampling = ExitSampling(k, "rotate")
  intermediate = layers - 1
  cover = -(-intermediate // k)
  key = jax.random.key(0)
  draws = [supervised_exits(sampling, layers, jnp.int32(t), key) for t in range(3 * intermediate)]
  for exits, factor in draws:
    assert int(exits[-1]) == layers - 1 and float(factor[-1]) == 1.0
    assert len(set(np.asarray(exits[:-1]).tolist())) == k
  for start in range(len(draws) - cover + 1):  # any `cover` consecutive steps see every exit
    seen = {int(e) for exits, _ in draws[start : start + cover] for e in exits[:-1]}
    assert seen == set(range(intermediate)), (start, seen)
  period = intermediate // math.gcd(intermediate, k)
  weight = np.zeros(intermediate)
  for exits, factor in draws[:period]:
    np.add.at(weight, np.asarray(exits[:-1]), np.asarray(factor[:-1]))
  np.testing.assert_allclose(weight / period, np.ones(intermediate), rtol=1e-6)


def test_random_draws_are_distinct_and_a_function_of_the_step_key():
  sampling = ExitSampling(3, "random")
  keys = [jax.random.fold_in(jax.random.key(7), step) for step in range(50)]
  draws = [np.asarray(supervised_exits(sampling, 10, jnp.int32(0), k)[0]) for k in keys]
  again = [np.asarray(supervised_exits(sampling, 10, jnp.int32(0), k)[0]) for k in keys]
  for exits, repeat in zip(draws, again):
    np.testing.assert_array_equal(exits, repeat)
    assert len(set(exits[:-1].tolist())) == 3 and exits[-1] == 9 and exits[:-1].max() < 9
  assert len({tuple(d) for d in draws}) > 10  # the draws do change with the step


def _rotate_two_with_classifier(model, tx, train_only=()):
  """The train state and a step supervising 2 rotated exits per step beside the final one, with the
  exit classifier's loss (weight 1)."""
  graphdef, state = init_train_state(model, tx, train_only=train_only)
  step = make_train_step(
    graphdef,
    tx,
    exit_weights("deed", LAYERS),
    classifier_weight=1.0,
    exit_sampling=ExitSampling(2, "rotate"),
    train_only=train_only,
  )
  return state, step


def test_sampled_step_compiles_once_and_trains_the_classifier_on_its_exits():
  model, batch = _model_and_batch(exit_classifier="linear")
  full = exit_metrics(model, batch)
  state, step = _rotate_two_with_classifier(model, optax.sgd(0.0))
  for index in range(3):
    state, metrics = step(state, batch, jax.random.key(0))
    supervised = np.flatnonzero(~np.isnan(np.asarray(metrics["exit_loss"])))
    # rotate with k=2 over 3 intermediate exits at step t: (2t, 2t + 1) mod 3, then the final.
    assert supervised.tolist() == sorted({(2 * index) % 3, (2 * index + 1) % 3, LAYERS - 1})
    for name, reference in (
      ("exit_loss", full.loss),
      ("exit_classifier_loss", full.classifier_loss),
    ):
      np.testing.assert_allclose(
        np.asarray(metrics[name])[supervised], np.asarray(reference)[supervised], rtol=1e-5
      )
  assert step._cache_size() == 1


def test_bad_sampling_is_refused():
  with pytest.raises(ValueError, match="exits_per_step=4 must be in 1..3"):
    supervised_exits(ExitSampling(4, "random"), 4, jnp.int32(0), jax.random.key(0))
  with pytest.raises(ValueError, match="'cyclic'"):
    supervised_exits(ExitSampling(1, "cyclic"), 4, jnp.int32(0), jax.random.key(0))
  with pytest.raises(ValueError, match="needs a loss that weighs every exit"):
    make_loss_fn(None, exit_weights("final", 4), exit_sampling=ExitSampling(1))


def test_rotate_over_an_accumulation_window_is_full_deep_supervision():
  """Three exits, rotate k=1: micro-steps 0 and 1 supervise exit 1 and exit 2 (each weighed 2x) beside
  the final one, so two accumulated micro-steps on the same batch apply exactly the gradient of full
  deep supervision (the loss is linear in the exits' losses)."""
  model, batch = _model_and_batch(decoder_layers=3)
  weights = exit_weights("deed", 3)
  start = jax.tree.map(np.asarray, split_model(model)[1])
  copied = lambda state: jax.tree.map(jnp.copy, state)  # the steps donate their input state
  graphdef, state = init_train_state(model, optax.sgd(0.1))
  full, _ = make_train_step(graphdef, optax.sgd(0.1), weights)(
    copied(state), batch, jax.random.key(0)
  )
  tx = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2).gradient_transformation()
  graphdef, state = init_train_state(model, tx)
  state = copied(state)
  step = make_train_step(graphdef, tx, weights, exit_sampling=ExitSampling(1, "rotate"))
  for _ in range(2):
    state, metrics = step(state, batch, jax.random.key(0))
  moved = 0
  for ours, reference, before in zip(
    jax.tree.leaves(state.params), jax.tree.leaves(full.params), jax.tree.leaves(start)
  ):
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)
    moved += not np.array_equal(ours, before)
  assert moved > 10


def test_train_only_the_classifier_on_sampled_exits_moves_only_their_probes():
  """train_only=("exit_classifier",) with rotate k=2 of 3: step 0 supervises exits 1, 2 and the
  final one, so only the probes of exits 1 and 2 move (the final exit's probe is not in the loss);
  every other parameter stays bit-identical."""
  model, batch = _model_and_batch(exit_classifier="linear")
  before = jax.tree.map(np.asarray, split_model(model)[1])
  state, step = _rotate_two_with_classifier(model, optax.sgd(0.5), train_only=("exit_classifier",))
  state, _ = step(jax.tree.map(jnp.copy, state), batch, jax.random.key(0))
  after = jax.tree.map(np.asarray, state.params)
  probe = after["decoder"]["exit_classifier"]["kernel"]  # [L, D]
  moved = np.abs(probe - before["decoder"]["exit_classifier"]["kernel"]).max(axis=1) > 0
  assert moved.tolist() == [True, True, False, False]
  del after["decoder"]["exit_classifier"], before["decoder"]["exit_classifier"]
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
