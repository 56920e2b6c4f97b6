"""The chunked head loss equals the plain cross-entropy of the full logits (optax's), its gradient
with respect to features, head table and bias, and the logits' argmax, for tied and untied heads and
chunk sizes that divide the vocabulary, do not, and exceed it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deed_jax.models.head_loss import HeadWeights, chunked_cross_entropy

N, D, V = 37, 16, 103


def _reference(features, head, targets, smoothing):
  """optax's cross-entropy of the whole [N, V] logits, with smoothed one-hot labels."""
  logits = head.logits(features)
  labels = (1 - smoothing) * jax.nn.one_hot(targets, V) + smoothing / V
  return optax.softmax_cross_entropy(logits, labels), jnp.argmax(logits, -1)


@pytest.mark.parametrize("vocab_axis", [0, 1])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_loss_and_gradient_equal_the_full_logits(vocab_axis, with_bias, smoothing):
  rng = np.random.default_rng(vocab_axis + 2 * with_bias)
  features = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, N))
  table = jnp.asarray(rng.normal(size=(V, D) if vocab_axis == 0 else (D, V)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=V), jnp.float32) if with_bias else None
  weights = jnp.arange(N, dtype=jnp.float32)  # a cotangent that differs per token

  def weighted(loss_fn):
    def total(features, table, bias):
      loss, argmax = loss_fn(features, HeadWeights(table, bias, vocab_axis), targets)
      return (loss * weights).sum(), argmax

    return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(features, table, bias)

  (expected, expected_argmax), expected_grads = weighted(
    lambda f, h, t: _reference(f, h, t, smoothing)
  )
  for chunk in (7, 50, 103, 500):  # overlapping last chunk, uneven, exact, one chunk
    (loss, argmax), grads = weighted(
      lambda f, h, t, chunk=chunk: chunked_cross_entropy(f, h, t, smoothing, chunk)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_array_equal(argmax, expected_argmax)
    for ours, reference in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
      scale = float(jnp.abs(reference).max())
      np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * scale)


def test_ties_go_to_the_first_maximum_across_chunks():
  """Columns 2 and 9 (in different chunks of 4) hold the same, largest logit: argmax says 2."""
  table = np.zeros((1, 12), np.float32)
  table[0, [2, 9]] = 3.0
  _, argmax = chunked_cross_entropy(
    np.ones((1, 1), np.float32), HeadWeights(table, None, 1), np.array([0]), 0.0, 4
  )
  assert int(argmax[0]) == 2


def test_refuses_an_empty_chunk():
  with pytest.raises(ValueError, match="vocab_chunk=0"):
    chunked_cross_entropy(
      np.ones((1, 1), np.float32), HeadWeights(np.ones((1, 3), np.float32), None, 1), [0], 0, 0
    )
