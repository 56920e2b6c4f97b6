"""Transformer building blocks: params with logical axes, norms, attention with a KV-cache seam, MLP.

Every parameter carries logical axis names (`embed, mlp, heads, kv, vocab`) in its `out_sharding`
metadata, ready for rules that map them to mesh axes (not applied yet: training runs on one device).
Layouts follow MaxText/t5x: attention projections are [D, H, Dh] so heads can be sharded, and K/V are
kept as [B, H, T, Dh].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.models.config import ModelConfig

Array = jax.Array
LogicalAxes = tuple[str | None, ...]

NEG_INF = -1e9  # Additive mask value; finite so fully masked rows give a uniform softmax, not NaN.
_INIT_STDDEV = 0.02


def param(
  rngs: nnx.Rngs | None,
  shape: tuple[int, ...],
  axes: LogicalAxes,
  init: str = "normal",
  dtype: str = "float32",
) -> nnx.Param:
  """A parameter with logical axis names; `init` is "normal" (std 0.02), "zeros" or "ones"."""
  if init == "normal":
    value = _INIT_STDDEV * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    raise ValueError(f"Unknown init {init!r}.")
  return nnx.Param(value.astype(dtype), out_sharding=axes, eager_sharding=False)


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
  """Inverted dropout; a no-op when `rng` is None (evaluation and decoding)."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def split_rng(rng: Array | None, num: int) -> list[Array | None]:
  return [None] * num if rng is None else list(jax.random.split(rng, num))


def call_layer(layer: nnx.Module, remat: bool, *args, **kwargs):
  """`layer(*args, **kwargs)`, under `nnx.remat` when `remat`: the backward pass then recomputes the
  layer's activations from its input instead of keeping them (per-layer rematerialisation, for
  models whose activations do not fit; the values are the same)."""
  if not remat:
    return layer(*args, **kwargs)
  return nnx.remat(lambda module, a, kw: module(*a, **kw))(layer, args, kwargs)


class Norm(nnx.Module):
  """LayerNorm (scale + bias) or T5-style RMSNorm (scale only), computed in float32."""

  def __init__(self, config: ModelConfig):
    self.rms = config.norm_type == "rmsnorm"
    self.eps = config.norm_eps
    self.scale = param(None, (config.d_model,), ("embed",), "ones", config.param_dtype)
    if not self.rms:
      self.bias = param(None, (config.d_model,), ("embed",), "zeros", config.param_dtype)

  def __call__(self, x: Array) -> Array:  # [..., D] -> [..., D]
    x32 = x.astype(jnp.float32)
    if self.rms:
      y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
      y = y * self.scale[...].astype(jnp.float32)
    else:
      mean = jnp.mean(x32, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
      y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
      y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head attention. Projections are separate so a KV cache can be filled block by block."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    d, h, dh = config.d_model, config.num_heads, config.resolved_head_dim
    pd = config.param_dtype
    self.dtype = jnp.dtype(config.dtype)
    self.scale = dh**-0.5 if config.scale_attention else 1.0
    self.q = param(rngs, (d, h, dh), ("embed", "heads", "kv"), dtype=pd)
    self.k = param(rngs, (d, h, dh), ("embed", "heads", "kv"), dtype=pd)
    self.v = param(rngs, (d, h, dh), ("embed", "heads", "kv"), dtype=pd)
    self.o = param(rngs, (h, dh, d), ("heads", "kv", "embed"), dtype=pd)
    self.use_bias = config.attention_bias
    if self.use_bias:
      self.q_bias = param(None, (h, dh), ("heads", "kv"), "zeros", pd)
      self.k_bias = param(None, (h, dh), ("heads", "kv"), "zeros", pd)
      self.v_bias = param(None, (h, dh), ("heads", "kv"), "zeros", pd)
      self.o_bias = param(None, (d,), ("embed",), "zeros", pd)

  def _project(self, x: Array, w: nnx.Param, b: nnx.Param | None) -> Array:
    # Contract into [B, T, H, Dh] and move the heads after: asking the dot for [B, H, T, Dh] directly
    # made XLA:CPU relayout the weight on every call (4x slower decoding projections).
    # [B, T, H, Dh]
    y = jnp.einsum("btd,dhk->bthk", x.astype(self.dtype), w[...].astype(self.dtype))
    if b is not None:
      y = y + b[...].astype(self.dtype)
    return jnp.swapaxes(y, 1, 2)  # [B, H, T, Dh]

  def project_q(self, x: Array) -> Array:  # [B, T, D] -> [B, H, T, Dh]
    return self._project(x, self.q, self.q_bias if self.use_bias else None) * self.scale

  def project_kv(self, x: Array) -> tuple[Array, Array]:  # [B, S, D] -> 2 x [B, H, S, Dh]
    k = self._project(x, self.k, self.k_bias if self.use_bias else None)
    v = self._project(x, self.v, self.v_bias if self.use_bias else None)
    return k, v

  def attend(self, q: Array, k: Array, v: Array, bias: Array) -> Array:
    """q [B, H, T, Dh], k/v [B, H, S, Dh], bias broadcastable to [B, H, T, S] -> [B, T, D]."""
    return self.attend_parts(q, ((k, v, bias),))

  def attend_parts(self, q: Array, parts: tuple[tuple[Array, Array, Array], ...]) -> Array:
    """Attention over the union of several (k [B, H, S_i, Dh], v, bias [.., T, S_i]) key sets, one
    softmax over all of them, without concatenating the keys: a KV cache is read where it lies (and
    can be updated in place afterwards) while a block attends to it and to its own new keys."""
    scores = [
      jnp.einsum("bhtk,bhsk->bhts", q, k).astype(jnp.float32) + bias for k, _, bias in parts
    ]
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)  # [B, H, T, sum of S_i]
    probs = probs.astype(self.dtype)
    ctx, offset = 0, 0
    for (_, v, _), part_scores in zip(parts, scores):
      part_probs = jax.lax.slice_in_dim(probs, offset, offset + part_scores.shape[-1], axis=-1)
      ctx = ctx + jnp.einsum("bhts,bhsk->bhtk", part_probs, v)  # [B, H, T, Dh]
      offset += part_scores.shape[-1]
    out = jnp.einsum("bhtk,hkd->btd", ctx, self.o[...].astype(self.dtype))  # [B, T, D]
    if self.use_bias:
      out = out + self.o_bias[...].astype(self.dtype)
    return out


class Mlp(nnx.Module):
  """Position-wise feed-forward: gelu / relu, or their gated variants (T5 v1.1's gated-gelu)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    d, f, pd = config.d_model, config.d_ff, config.param_dtype
    self.dtype = jnp.dtype(config.dtype)
    self.gated = config.is_gated_mlp
    self.activation = {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "gated-gelu": lambda x: jax.nn.gelu(x, approximate=True),  # T5 v1.1 uses gelu_new (tanh).
      "gated-relu": jax.nn.relu,
    }[config.mlp_activation]
    self.wi = param(rngs, (d, f), ("embed", "mlp"), dtype=pd)
    if self.gated:
      self.wi_gate = param(rngs, (d, f), ("embed", "mlp"), dtype=pd)
    self.wo = param(rngs, (f, d), ("mlp", "embed"), dtype=pd)
    self.use_bias = config.mlp_bias
    if self.use_bias:
      self.wi_bias = param(None, (f,), ("mlp",), "zeros", pd)
      self.wo_bias = param(None, (d,), ("embed",), "zeros", pd)

  def __call__(self, x: Array) -> Array:  # [B, T, D] -> [B, T, D]
    x = x.astype(self.dtype)
    hidden = x @ self.wi[...].astype(self.dtype)  # [B, T, F]
    if self.use_bias:
      hidden = hidden + self.wi_bias[...].astype(self.dtype)
    if self.gated:
      hidden = self.activation(x @ self.wi_gate[...].astype(self.dtype)) * hidden
    else:
      hidden = self.activation(hidden)
    out = hidden @ self.wo[...].astype(self.dtype)  # [B, T, D]
    if self.use_bias:
      out = out + self.wo_bias[...].astype(self.dtype)
    return out


def sinusoidal_positions(positions: Array, dim: int) -> Array:
  """Fairseq/BART-style sinusoids: [sin | cos] halves. positions [...] -> [..., dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [..., half]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
  return emb


class RelativePositionBias(nnx.Module):
  """T5 bucketed relative position bias, shared by all layers of one stack."""

  def __init__(self, config: ModelConfig, bidirectional: bool, rngs: nnx.Rngs):
    self.bidirectional = bidirectional
    self.num_buckets = config.relative_attention_num_buckets
    self.max_distance = config.relative_attention_max_distance
    self.embedding = param(
      rngs, (self.num_buckets, config.num_heads), (None, "heads"), dtype=config.param_dtype
    )

  def _bucket(self, relative: Array) -> Array:
    num_buckets, bucket = self.num_buckets, jnp.zeros_like(relative)
    if self.bidirectional:
      num_buckets //= 2
      bucket = bucket + (relative > 0).astype(jnp.int32) * num_buckets
      relative = jnp.abs(relative)
    else:
      relative = -jnp.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (
      jnp.log(jnp.maximum(relative, 1).astype(jnp.float32) / max_exact)
      / math.log(self.max_distance / max_exact)
      * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, relative, large)

  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """query_positions [T], key_positions [S] -> bias [1, H, T, S] (float32)."""
    relative = key_positions[None, :] - query_positions[:, None]  # [T, S]
    values = self.embedding[...].astype(jnp.float32)[self._bucket(relative)]  # [T, S, H]
    return jnp.transpose(values, (2, 0, 1))[None]


class TokenEmbedding(nnx.Module):
  """The token table [V, D] shared by the text encoder, the decoder and a tied LM head (HF's
  `shared`): `embed` looks ids up (the tied head reads the table: `model.head_weights`)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.scale = config.d_model**0.5 if config.scale_embedding else None
    self.embedding = param(
      rngs, (config.vocab_size, config.d_model), ("vocab", "embed"), dtype=config.param_dtype
    )

  def embed(self, token_ids: Array) -> Array:  # [...] int -> [..., D] float32
    x = self.embedding[...][token_ids].astype(jnp.float32)
    return x if self.scale is None else x * self.scale


class PositionEmbedding(nnx.Module):
  """Absolute positions added to token embeddings: learned (with BART's offset) or sinusoidal.

  With T5's relative bias there is no absolute embedding and this returns zeros.
  """

  def __init__(self, config: ModelConfig, max_length: int, rngs: nnx.Rngs):
    self.kind = config.position_embedding
    self.offset = config.position_offset
    self.dim = config.d_model
    self.max_length = max_length
    if self.kind == "learned":
      self.table = param(
        rngs, (max_length + self.offset, config.d_model), (None, "embed"), dtype=config.param_dtype
      )

  def __call__(self, positions: Array) -> Array:  # [T] int -> [T, D] float32
    if self.kind == "learned":
      return self.table[...].astype(jnp.float32)[positions + self.offset]
    if self.kind == "sinusoidal":
      return sinusoidal_positions(positions + self.offset, self.dim)
    return jnp.zeros(positions.shape + (self.dim,), jnp.float32)
