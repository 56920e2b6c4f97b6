"""The multi-exit decoder: L layers, each followed by an exit (adapter_l -> shared final norm).

The decoder owns the token embedding (a `TokenEmbedding` the model's text encoder and tied LM head
read too, so its checkpoint path is `decoder/token_embedding/embedding`); the shared LM head lives in
the model. Two ways in:
- `__call__`: the teacher-forced pass over whole sequences (training, the naive reference);
- the incremental seam decoding drives one layer and one block of positions at a time:
  `init_cache`, `cross_memory` (once per call), `embed`, `run_block(j, ...)`, `exit(j, h)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.models.config import ModelConfig
from deed_jax.models.exits import ExitAdapter, ExitClassifier
from deed_jax.models.kv_cache import KVCache
from deed_jax.models.layers import (
  NEG_INF,
  Norm,
  PositionEmbedding,
  RelativePositionBias,
  TokenEmbedding,
  call_layer,
  dropout,
  split_rng,
)
from deed_jax.models.transformer_layer import TransformerLayer, causal_bias, padding_bias

Array = jax.Array


class CrossMemory(NamedTuple):
  """The encoder output as every decoder layer's cross-attention reads it; built once per decode."""

  kv: tuple[tuple[Array, Array], ...]  # L x (k, v), each [B, H, S, Dh]
  bias: Array  # [B, 1, 1, S] additive padding bias


class Decoder(nnx.Module):
  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    self.token_embedding = TokenEmbedding(config, rngs)
    self.positions = PositionEmbedding(config, config.max_target_length, rngs)
    if config.position_embedding == "relative":
      self.relative_bias = RelativePositionBias(config, bidirectional=False, rngs=rngs)
    if config.embedding_norm:
      self.embedding_norm = Norm(config)
    self.layers = nnx.List(
      [
        TransformerLayer(config, cross_attention=True, rngs=rngs)
        for _ in range(config.decoder_layers)
      ]
    )
    self.adapters = nnx.List([ExitAdapter(config, rngs) for _ in range(config.decoder_layers)])
    if config.exit_classifier != "none":
      self.exit_classifier = ExitClassifier(config, rngs)
    # Pre-norm stacks end in a norm, shared by every exit; post-norm stacks (BART) have none.
    if config.norm_position == "pre":
      self.final_norm = Norm(config)

  def embed(self, token_ids: Array, positions: Array) -> Array:
    """token_ids [B, T], positions [T] or [B, T] -> [B, T, D] in the compute dtype."""
    cfg = self.config
    x = self.token_embedding.embed(token_ids) + self.positions(positions)
    if cfg.embedding_norm:
      x = self.embedding_norm(x)
    return x.astype(cfg.dtype)

  def self_bias(self, query_positions: Array, key_positions: Array) -> Array:
    """Causal mask (+ T5 relative bias): [T], [S] -> [1, 1 or H, T, S]."""
    bias = causal_bias(query_positions, key_positions)
    if self.config.position_embedding == "relative":
      bias = bias + self.relative_bias(query_positions, key_positions)
    return bias

  def init_cache(self, rows: int, length: int) -> tuple[KVCache, ...]:
    """Empty self-attention caches of every layer: L x (k, v) [rows, H, length, Dh], compute dtype."""
    cfg = self.config
    return tuple(
      KVCache.zeros(rows, cfg.num_heads, length, cfg.resolved_head_dim, jnp.dtype(cfg.dtype))
      for _ in range(cfg.decoder_layers)
    )

  def cross_memory(self, encoder_out: Array, encoder_mask: Array) -> CrossMemory:
    """encoder_out [B, S, D_enc], encoder_mask [B, S] -> every layer's cross K/V and the padding bias."""
    return CrossMemory(
      tuple(layer.cross_attention.project_kv(encoder_out) for layer in self.layers),
      padding_bias(encoder_mask),
    )

  def block_bias(
    self, start: Array | int, width: int, cache_length: int, pad: Array | None = None
  ) -> Array:
    """The self-attention bias of a block of slots [start, start + W) over a cache of
    `cache_length` slots: [1, 1|H, W, T], or [R, 1|H, W, T] with `pad` [R] (left-padded prompts:
    row r's slots [0, pad[r]) are padding, masked out). The same for every layer, so a caller may
    build it once."""
    slots = jnp.arange(cache_length)
    bias = self.self_bias(start + jnp.arange(width), slots)
    if pad is None:
      return bias
    return bias + jnp.where(slots[None, :] < pad[:, None], NEG_INF, 0.0)[:, None, None, :]

  def run_block(
    self,
    j: int,
    x: Array,
    start: Array | int,
    cache: KVCache,
    memory: CrossMemory,
    bias: Array | None = None,
  ) -> tuple[Array, KVCache]:
    """Layer j (0-based) over the block of positions [start, start + W): x [B, W, D] is layer j-1's
    output there. The block attends to the cache's positions before `start` and to itself (causally),
    and its K/V are written into the cache at `start`. `bias` is `block_bias(start, W, T)`, built
    here when not given. -> (layer j's output [B, W, D], cache)."""
    if bias is None:
      bias = self.block_bias(start, x.shape[1], cache.k.shape[2])  # [1, 1|H, W, T]
    return self.layers[j](
      x, bias, cross_kv=memory.kv[j], cross_bias=memory.bias, cache=cache, cache_index=start
    )

  def self_kv(self, j: int, x: Array) -> tuple[Array, Array]:
    """The self-attention K/V layer j derives from an input x [B, T, D]: 2 x [B, H, T, Dh]. (CALM's
    copy mode gives a skipped layer K/V projected from the exit state.)"""
    return self.layers[j].self_kv(x)

  def exit(self, j: int, hidden: Array) -> Array:
    """Exit j (0-based): the layer's output through adapter_j and the shared final norm. [..., D]."""
    h = self.adapters[j](hidden)
    return self.final_norm(h) if self.config.norm_position == "pre" else h

  def exit_probability(self, features: Array, layer: int | None = None) -> Array:
    """The exit classifier's confidence from exit features: exit `layer` (0-based) [..., D] -> [...],
    or every exit's [L, ..., D] -> [L, ...] (float32). Needs `exit_classifier` in the config."""
    if self.config.exit_classifier == "none":
      raise ValueError("This model has no exit classifier (ModelConfig.exit_classifier='none').")
    return self.exit_classifier(features, layer)

  def __call__(
    self,
    token_ids: Array,
    encoder_out: Array,
    encoder_mask: Array,
    *,
    num_layers: int | None = None,
    dropout_rng: Array | None = None,
    kv_input_fn: Callable[[int, Array], Array] | None = None,
    return_states: bool = False,
    remat: bool = False,
  ) -> Array | tuple[Array, Array]:
    """Full-sequence (teacher-forced) pass. Returns the features of exits 1..num_layers: [L', B, T, D]
    (and with `return_states`, the layer states [L' + 1, B, T, D]: the embedding, then each layer's
    output, which head-free confidences and CALM's copy mode read).

    `kv_input_fn(j, x)` (CALM's copied states, naive reference): layer j derives its self-attention
    K/V from the returned [B, T, D] instead of its input x. `remat` rematerialises each layer.
    """
    num_layers = num_layers or self.config.decoder_layers
    rngs = split_rng(dropout_rng, num_layers + 1)
    positions = jnp.arange(token_ids.shape[1])
    x = dropout(self.embed(token_ids, positions), self.config.dropout_rate, rngs[-1])
    self_bias = self.self_bias(positions, positions)
    cross_bias = padding_bias(encoder_mask)
    exits, states = [], [x]
    for index in range(num_layers):
      layer = self.layers[index]
      cross_kv = layer.cross_attention.project_kv(encoder_out)
      kv_input = None if kv_input_fn is None else kv_input_fn(index, x)
      x, _ = call_layer(
        layer,
        remat,
        x,
        self_bias,
        cross_kv=cross_kv,
        cross_bias=cross_bias,
        kv_input=kv_input,
        dropout_rng=rngs[index],
      )
      exits.append(self.exit(index, x))
      states.append(x)
    if return_states:
      return jnp.stack(exits), jnp.stack(states)  # [L', B, T, D], [L' + 1, B, T, D]
    return jnp.stack(exits)  # [L', B, T, D]
