"""Deep-supervision losses: exit weights per mode, and the total loss against a hand computation."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from deed_jax.exit_metrics import exit_metrics
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.models.head_loss import HeadWeights, chunked_cross_entropy
from deed_jax.training.losses import LOSS_MODES, exit_weights
from deed_jax.training.train_step import init_train_state, make_train_step
from tests.conftest import random_inputs, randomize, tiny_config


def test_exit_weights_of_the_three_modes():
  np.testing.assert_allclose(exit_weights("deed", 4), [0.25, 0.25, 0.25, 1.25])
  np.testing.assert_allclose(exit_weights("linear", 4), [0.1, 0.2, 0.3, 0.4])
  np.testing.assert_allclose(exit_weights("final", 4), [0.0, 0.0, 0.0, 1.0])
  np.testing.assert_allclose(exit_weights("deed", 1), [2.0])
  with pytest.raises(ValueError, match="'calm'"):
    exit_weights("calm", 4)


def _hand_cross_entropies(logits, targets, mask, smoothing=0.0):
  """Per-exit mean CE over unmasked tokens, with explicit loops over exits and tokens."""
  out = []
  for exit_logits in logits:  # [B, T, V]
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
      for t in range(targets.shape[1]):
        if mask[b, t]:
          z = exit_logits[b, t].astype(np.float64)
          log_probs = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
          nll = -log_probs[targets[b, t]]
          total += (1 - smoothing) * nll + smoothing * -log_probs.mean()
          count += 1
    out.append(total / count)
  return np.array(out)


@pytest.mark.parametrize("vocab_chunk", [4096, 7])  # one chunk; several, the last overlapping
@pytest.mark.parametrize("mode", LOSS_MODES)
def test_train_step_loss_equals_hand_computation(mode, vocab_chunk):
  config = tiny_config(decoder_layers=3)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=4, scale=0.2)
  encoder_inputs, decoder_ids = random_inputs(config, batch=3, target_length=6)
  targets = np.roll(decoder_ids, -1, axis=1)
  mask = np.ones_like(targets)
  mask[1, 3:] = 0
  mask[2, 5:] = 0
  logits = np.asarray(model(encoder_inputs, decoder_ids))  # [L, B, T, V]
  per_exit = _hand_cross_entropies(logits, targets, mask)
  if mode == "deed":
    expected = per_exit.mean() + per_exit[-1]
  elif mode == "linear":
    expected = (1 * per_exit[0] + 2 * per_exit[1] + 3 * per_exit[2]) / 6
  else:
    expected = per_exit[-1]

  tx = optax.sgd(0.0)
  graphdef, state = init_train_state(model, tx)
  step = make_train_step(graphdef, tx, exit_weights(mode, 3), vocab_chunk=vocab_chunk)
  batch = {
    **encoder_inputs,
    "decoder_input_ids": decoder_ids,
    "targets": targets,
    "target_mask": mask,
  }
  _, metrics = step(state, batch, jax.random.key(0))
  if mode == "final":  # only the final exit's head runs; the others' metrics are NaN
    assert np.isnan(np.asarray(metrics["exit_loss"])[:-1]).all()
    per_exit[:-1] = np.nan
  np.testing.assert_allclose(np.asarray(metrics["exit_loss"]), per_exit, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


def test_label_smoothing_matches_hand_computation():
  config = tiny_config()
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=5, scale=0.2)
  encoder_inputs, decoder_ids = random_inputs(config, batch=2, target_length=5)
  targets = np.roll(decoder_ids, -1, axis=1)
  mask = np.ones_like(targets)
  batch = {
    **encoder_inputs,
    "decoder_input_ids": decoder_ids,
    "targets": targets,
    "target_mask": mask,
  }
  losses = exit_metrics(model, batch, label_smoothing=0.1, vocab_chunk=5).loss
  expected = _hand_cross_entropies(
    np.asarray(model(encoder_inputs, decoder_ids)), targets, mask, 0.1
  )
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5)


def test_cross_entropy_of_a_known_distribution():
  """Identity features through a head whose logits are log(0.5, 0.25, 0.25): -log 0.25 = log 4."""
  head = HeadWeights(np.log(np.array([[0.5, 0.25, 0.25]], np.float32)), None, 1)  # [D=1, V=3]
  for chunk in (1, 2, 3):
    loss, argmax = chunked_cross_entropy(
      np.ones((1, 1), np.float32), head, np.array([1]), 0.0, chunk
    )
    np.testing.assert_allclose(np.asarray(loss), [np.log(4)], rtol=1e-6)
    assert int(argmax[0]) == 0


def test_gradients_flow_to_every_exit_adapter_only_under_deep_supervision():
  """`final` trains no shallow adapter; `deed` trains them all (the loss really covers every exit)."""
  config = tiny_config(decoder_layers=3, adapter="linear")
  encoder_inputs, decoder_ids = random_inputs(config)
  batch = {
    **encoder_inputs,
    "decoder_input_ids": decoder_ids,
    "targets": np.roll(decoder_ids, -1, axis=1),
    "target_mask": np.ones_like(decoder_ids),
  }
  for mode, shallow_trained in (("deed", True), ("final", False)):
    model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=6, scale=0.2)
    tx = optax.sgd(0.1)
    graphdef, state = init_train_state(model, tx)
    before = jax.tree.map(np.asarray, state.params)
    new_state, _ = make_train_step(graphdef, tx, exit_weights(mode, 3))(
      state, batch, jax.random.key(0)
    )
    for index in range(3):
      moved = (
        np.abs(
          np.asarray(new_state.params["decoder"]["adapters"][index]["w"])
          - before["decoder"]["adapters"][index]["w"]
        ).max()
        > 0
      )
      assert moved == (shallow_trained or index == 2), (mode, index)
