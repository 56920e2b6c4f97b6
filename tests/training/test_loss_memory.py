"""The per-exit loss never materialises all [L, B, T, V] logits (forward or backward)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deed_jax.exit_metrics import cross_entropy, per_exit_losses

B, T, D, V = 4, 32, 64, 16384


def _temp_bytes(fn, *args) -> int:
  return (
    jax.jit(jax.grad(fn, argnums=(0, 1)))
    .lower(*args)
    .compile()
    .memory_analysis()
    .temp_size_in_bytes
  )


def _memory(num_exits: int) -> tuple[int, int]:
  """Temp bytes of value-and-grad for (our scanned loss, a naive all-logits loss) with L exits."""
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(num_exits, B, T, D)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(D, V)) * 0.05, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)))
  mask = jnp.ones((B, T))

  def scanned(features, head):
    losses, _, _ = per_exit_losses(lambda h: h @ head, features, targets, mask)
    return losses.sum()

  def all_at_once(features, head):  # The naive way: [L, B, T, V] logits in one piece.
    logits = features @ head
    return (
      cross_entropy(logits, jnp.broadcast_to(targets, logits.shape[:3])).mean(axis=(1, 2)).sum()
    )

  np.testing.assert_allclose(scanned(features, head), all_at_once(features, head), rtol=1e-5)
  return _temp_bytes(scanned, features, head), _temp_bytes(all_at_once, features, head)


def test_loss_memory_does_not_grow_with_the_number_of_exits():
  one_exit_logits = B * T * V * 4
  ours_6, naive_6 = _memory(6)
  ours_12, naive_12 = _memory(12)
  assert (
    naive_12 >= 12 * one_exit_logits and naive_12 > 1.8 * naive_6
  )  # The reference grows with L...
  assert ours_12 < ours_6 + one_exit_logits  # ...ours stays at a few single-exit buffers,
  assert ours_12 < naive_12 / 4, (ours_12, naive_12)
