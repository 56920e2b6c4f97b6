"""The decoder's self-attention KV cache: its layout and every operation on it.

One `KVCache` per decoder layer, preallocated for the whole decode: k, v [R, H, T_c, Dh] (R rows:
batch, or batch x beams; T_c cache positions). Writes are `dynamic_update_slice`s at a traced start,
so XLA updates the cache in place inside loops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class KVCache(NamedTuple):
  """Self-attention cache of one decoder layer: k, v [R, H, T_c, Dh]."""

  k: Array
  v: Array

  @classmethod
  def zeros(cls, rows: int, heads: int, length: int, head_dim: int, dtype) -> KVCache:
    shape = (rows, heads, length, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  @property
  def length(self) -> int:
    return self.k.shape[2]

  def write(self, k: Array, v: Array, start: Array | int) -> KVCache:
    """The block's K/V [R, H, W, Dh] written at positions [start, start + W)."""
    at = (0, 0, start, 0)
    return KVCache(
      jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), at),
      jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), at),
    )

  def write_rows(self, k: Array, v: Array, position: Array, rows: Array) -> KVCache:
    """K/V [R, H, 1, Dh] written at `position` for the rows where `rows` [R] is True; the others keep
    what they hold there (CALM's copy mode overwrites only the rows that exited below this layer)."""
    mask = rows[:, None, None, None]

    def update(cached: Array, new: Array) -> Array:
      current = jax.lax.dynamic_slice_in_dim(cached, position, 1, axis=2)  # [R, H, 1, Dh]
      value = jnp.where(mask, new.astype(cached.dtype), current)
      return jax.lax.dynamic_update_slice_in_dim(cached, value, position, axis=2)

    return KVCache(update(self.k, k), update(self.v, v))

  def take_rows(self, rows: Array) -> KVCache:
    """Row r continues the history of row rows[r] ([R] int32): beam search's reordering."""
    return KVCache(jnp.take(self.k, rows, axis=0), jnp.take(self.v, rows, axis=0))
