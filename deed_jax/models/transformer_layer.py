"""One transformer layer, encoder or decoder, and the attention masks it is called with.

A decoder layer is callable on its own, either over a whole sequence (training, the naive reference) or
over a block of positions written into a preallocated KV cache at `cache_index` (the seam DEED's
just-in-time backfill uses: deferred positions of a layer are run as one causal block).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.models.config import ModelConfig
from deed_jax.models.kv_cache import KVCache
from deed_jax.models.layers import NEG_INF, Attention, Mlp, Norm, dropout, split_rng

Array = jax.Array


class TransformerLayer(nnx.Module):
  """Self-attention (+ cross-attention for decoder layers) + MLP, pre- or post-norm."""

  def __init__(self, config: ModelConfig, *, cross_attention: bool, rngs: nnx.Rngs):
    self.pre_norm = config.norm_position == "pre"
    self.dropout_rate = config.dropout_rate
    self.self_attention = Attention(config, rngs)
    self.self_attention_norm = Norm(config)
    self.has_cross_attention = cross_attention
    if cross_attention:
      self.cross_attention = Attention(config, rngs)
      self.cross_attention_norm = Norm(config)
    self.mlp = Mlp(config, rngs)
    self.mlp_norm = Norm(config)

  def self_kv(self, x: Array) -> tuple[Array, Array]:
    """The self-attention K/V this layer derives from its input x [B, T, D]: 2 x [B, H, T, Dh].

    CALM-style state copying projects a skipped layer's K/V from another layer's output with it.
    """
    h = self.self_attention_norm(x) if self.pre_norm else x
    return self.self_attention.project_kv(h)

  def _residual(self, norm: Norm, sublayer, x: Array, rng: Array | None) -> Array:
    if self.pre_norm:
      return x + dropout(sublayer(norm(x)), self.dropout_rate, rng)
    return norm(x + dropout(sublayer(x), self.dropout_rate, rng))

  def __call__(
    self,
    x: Array,  # [B, T, D]
    self_bias: Array,  # broadcastable to [B, H, T, S]; S = T, or T_max with a cache
    *,
    cross_kv: tuple[Array, Array] | None = None,  # 2 x [B, H, S_enc, Dh]
    cross_bias: Array | None = None,  # [B, 1, 1, S_enc]
    cache: KVCache | None = None,
    cache_index: Array | int | None = None,  # first position of this block in the cache
    kv_input: Array | None = None,  # [B, T, D]: derive the self-attention K/V from it, not from x
    dropout_rng: Array | None = None,
  ) -> tuple[Array, KVCache | None]:
    rngs = split_rng(dropout_rng, 3)
    kv = None if kv_input is None else self.self_kv(kv_input)

    def self_attend(h: Array) -> Array:
      nonlocal cache
      attention = self.self_attention
      k, v = attention.project_kv(h) if kv is None else kv  # [B, H, T, Dh]
      q = attention.project_q(h)
      if cache is None:
        return attention.attend(q, k, v, self_bias)
      # The block attends to the cache's positions before it and to its own K/V; the cache is only
      # read here and written once below, so XLA updates it in place (attending to the updated cache
      # made XLA:CPU copy it at batch 1: one copy for the loop carry, one for the attention's view).
      cache_positions = jnp.arange(cache.k.shape[2])
      before_block = jnp.where(cache_positions < cache_index, 0.0, NEG_INF)  # [T_max]
      block_bias = jax.lax.dynamic_slice_in_dim(self_bias, cache_index, k.shape[2], axis=-1)
      # [B, T, D]
      out = attention.attend_parts(
        q, ((cache.k, cache.v, self_bias + before_block), (k, v, block_bias))
      )
      k, v = (ordered_after(x, out) for x in (k, v))
      cache = cache.write(k, v, cache_index)
      return out

    x = self._residual(self.self_attention_norm, self_attend, x, rngs[0])
    if self.has_cross_attention:
      if cross_kv is None:
        raise ValueError("A decoder layer needs the encoder's cross-attention keys and values.")
      cross = lambda h: self.cross_attention.attend(
        self.cross_attention.project_q(h), cross_kv[0], cross_kv[1], cross_bias
      )
      x = self._residual(self.cross_attention_norm, cross, x, rngs[1])
    x = self._residual(self.mlp_norm, self.mlp, x, rngs[2])
    return x, cache


def ordered_after(x: Array, dependency: Array) -> Array:
  """x, made to depend on `dependency` so XLA computes it afterwards: a cache written from it is then
  written after every read of the old cache, in place. (XLA:CPU drops `optimization_barrier` before
  it orders buffers; x + 0 * d is not folded for floats.) A NaN or inf in `dependency` is replaced
  first, so it cannot turn x into NaN."""
  d = dependency.reshape(-1)[0]
  return x + 0.0 * jnp.where(jnp.isfinite(d), d, 0.0).astype(x.dtype)


def causal_bias(query_positions: Array, key_positions: Array) -> Array:
  """[T], [S] -> [1, 1, T, S]: 0 where key <= query, NEG_INF elsewhere."""
  allowed = key_positions[None, :] <= query_positions[:, None]
  return jnp.where(allowed, 0.0, NEG_INF)[None, None]


def padding_bias(mask: Array) -> Array:
  """[B, S] (1 = real token) -> [B, 1, 1, S] additive bias."""
  return jnp.where(mask[:, None, None, :].astype(bool), 0.0, NEG_INF)
