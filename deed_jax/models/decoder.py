"""The multi-exit decoder: L layers, each followed by an exit (adapter_l -> shared final norm).

The shared LM head lives in the model (it may be tied to the token embedding). Decoding code drives
the pieces one by one: `embed`, `self_bias`, `cross_kv`, `layers[l]`, `exit_features`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.models.config import ModelConfig
from deed_jax.models.encoder import PositionEmbedding
from deed_jax.models.layers import Norm, RelativePositionBias, dropout, split_rng
from deed_jax.models.transformer import ExitAdapter, TransformerLayer, causal_bias, padding_bias

Array = jax.Array


class Decoder(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    self.positions = PositionEmbedding(config, config.max_target_length, rngs)
    if config.position_embedding == "relative":
      self.relative_bias = RelativePositionBias(config, bidirectional=False, rngs=rngs)
    if config.embedding_norm:
      self.embedding_norm = Norm(config)
    self.layers = nnx.List([
        TransformerLayer(config, cross_attention=True, rngs=rngs) for _ in range(config.decoder_layers)
    ])
    self.adapters = nnx.List([ExitAdapter(config, rngs) for _ in range(config.decoder_layers)])
    # Pre-norm stacks end in a norm, shared by every exit; post-norm stacks (BART) have none.
    if config.norm_position == "pre":
      self.final_norm = Norm(config)

  def embed(self, token_ids: Array, positions: Array, token_embedding: Array) -> Array:
    """token_ids [B, T], positions [T] -> [B, T, D] in the compute dtype."""
    cfg = self.config
    x = token_embedding[token_ids].astype(jnp.float32)
    if cfg.scale_embedding:
      x = x * cfg.d_model**0.5
    x = x + self.positions(positions)
    if cfg.embedding_norm:
      x = self.embedding_norm(x)
    return x.astype(cfg.dtype)

  def self_bias(self, query_positions: Array, key_positions: Array) -> Array:
    """Causal mask (+ T5 relative bias): [T], [S] -> [1, 1 or H, T, S]."""
    bias = causal_bias(query_positions, key_positions)
    if self.config.position_embedding == "relative":
      bias = bias + self.relative_bias(query_positions, key_positions)
    return bias

  def cross_kv(self, encoder_out: Array) -> list[tuple[Array, Array]]:
    """Cross-attention K/V of every layer, computed once per encoder output: L x 2 x [B, H, S, Dh]."""
    return [layer.cross_attention.project_kv(encoder_out) for layer in self.layers]

  def exit_features(self, hidden: Array, layer_index: int) -> Array:
    """Exit after layer `layer_index` (0-based): adapter -> shared final norm. [..., D] -> [..., D]."""
    h = self.adapters[layer_index](hidden)
    return self.final_norm(h) if self.config.norm_position == "pre" else h

  def __call__(self, token_ids: Array, encoder_out: Array, encoder_mask: Array, token_embedding: Array,
               *, num_layers: int | None = None, dropout_rng: Array | None = None,
               kv_input_fn: Callable[[int, Array], Array] | None = None) -> Array:
    """Full-sequence (teacher-forced) pass. Returns the features of exits 1..num_layers: [L', B, T, D].

    `kv_input_fn(j, x)` (CALM's copied states, naive reference): layer j derives its self-attention
    K/V from the returned [B, T, D] instead of its input x.
    """
    num_layers = num_layers or self.config.decoder_layers
    rngs = split_rng(dropout_rng, num_layers + 1)
    positions = jnp.arange(token_ids.shape[1])
    x = dropout(self.embed(token_ids, positions, token_embedding), self.config.dropout_rate, rngs[-1])
    self_bias = self.self_bias(positions, positions)
    cross_bias = padding_bias(encoder_mask)
    exits = []
    for index in range(num_layers):
      layer = self.layers[index]
      cross_kv = layer.cross_attention.project_kv(encoder_out)
      kv_input = None if kv_input_fn is None else kv_input_fn(index, x)
      x, _ = layer(x, self_bias, cross_kv=cross_kv, cross_bias=cross_bias, kv_input=kv_input,
                   dropout_rng=rngs[index])
      exits.append(self.exit_features(x, index))
    return jnp.stack(exits)  # [L', B, T, D]
