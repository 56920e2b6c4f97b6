"""The per-exit loss never materialises [tokens, V] logits for any exit, forward or backward, and its
memory does not grow with the number of exits."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deed_jax.exit_metrics import per_exit_losses
from deed_jax.models.head_loss import HeadWeights

B, T, D, V = 8, 64, 64, 16384
CHUNK = 1024


def _compiled_grad(fn, *args):
  return jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*args).compile()


def _largest_array(compiled) -> int:
  """Elements of the largest float32 array anywhere in the compiled program."""
  shapes = re.findall(r"f32\[([\d,]+)\]", compiled.as_text())
  return max(math.prod(int(n) for n in shape.split(",")) for shape in shapes)


def _memory(num_exits: int) -> tuple[int, int, int]:
  """Temp bytes of the gradient of (our chunked loss, a naive all-logits loss) with L exits, and the
  largest array of ours (elements)."""
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(num_exits, B, T, D)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(D, V)) * 0.05, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)))
  mask = jnp.ones((B, T))

  def chunked(features, table):
    losses, _, _ = per_exit_losses(HeadWeights(table, None, 1), features, targets, mask, 0.0, CHUNK)
    return losses.sum()

  def all_at_once(features, table):  # The naive way: [L, B, T, V] logits in one piece.
    logits = features @ table
    labels = jnp.broadcast_to(targets, logits.shape[:3])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=(1, 2)).sum()

  np.testing.assert_allclose(chunked(features, table), all_at_once(features, table), rtol=1e-5)
  ours = _compiled_grad(chunked, features, table)
  naive = _compiled_grad(all_at_once, features, table)
  temp = lambda compiled: compiled.memory_analysis().temp_size_in_bytes
  return temp(ours), temp(naive), _largest_array(ours)


def test_loss_memory_stays_below_one_exit_of_logits_whatever_the_number_of_exits():
  one_exit_logits = B * T * V * 4
  ours_6, naive_6, _ = _memory(6)
  ours_12, naive_12, largest = _memory(12)
  # The reference grows with L...
  assert naive_12 >= 12 * one_exit_logits and naive_12 > 1.8 * naive_6
  # ...ours holds no exit's logits at all (its largest arrays: the head's gradient [D, V], chunks
  # [B*T, CHUNK]), in less memory than one exit's logits, and grows little with L.
  assert largest <= max(D * V, B * T * CHUNK), largest
  assert ours_12 < one_exit_logits, (ours_12, one_exit_logits)
  assert ours_12 < ours_6 + one_exit_logits / 4, (ours_6, ours_12)
