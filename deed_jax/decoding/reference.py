"""Naive reference decoding: re-run the whole decoder over the whole prefix at every step.

Slow on purpose and obviously right: no KV cache, no early exit inside the network. It is what the
per-exit evaluation decodes with, and the independent reference the DEED decoder is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deed_jax.models import MultiExitEncoderDecoder


def greedy_at_exit(model: MultiExitEncoderDecoder, encoder_inputs: dict, exit_layer: jax.Array | int,
                   max_new_tokens: int) -> jax.Array:
  """Greedy tokens [B, max_new_tokens] taken from exit `exit_layer` (1-based; may be traced).

  After EOS a row emits pad. `max_new_tokens` must not exceed the model's `max_target_length`.
  """
  model.check_inputs(encoder_inputs)
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  return greedy_at_exit_encoded(model, encoder_out, encoder_mask, exit_layer, max_new_tokens)


def greedy_at_exit_encoded(model: MultiExitEncoderDecoder, encoder_out: jax.Array,
                           encoder_mask: jax.Array, exit_layer: jax.Array | int,
                           max_new_tokens: int) -> jax.Array:
  """`greedy_at_exit` from encoder states [B, S, D] and mask [B, S] computed once by the caller."""
  cfg = model.config
  if not 1 <= max_new_tokens <= cfg.max_target_length:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, max_target_length="
                     f"{cfg.max_target_length}].")
  batch = encoder_out.shape[0]
  prefix = jnp.full((batch, max_new_tokens), cfg.pad_id, jnp.int32).at[:, 0].set(cfg.bos_id)  # [B, N]
  tokens = jnp.full((batch, max_new_tokens), cfg.pad_id, jnp.int32)  # [B, N]
  done = jnp.zeros((batch,), bool)  # [B]

  def step(t, carry):
    prefix, tokens, done = carry
    features = model.decoder(prefix, encoder_out, encoder_mask, model.token_embedding[...])  # [L,B,N,D]
    hidden = jax.lax.dynamic_index_in_dim(features, exit_layer - 1, axis=0, keepdims=False)  # [B, N, D]
    hidden = jax.lax.dynamic_index_in_dim(hidden, t, axis=1, keepdims=False)  # [B, D]
    token = jnp.argmax(model.logits(hidden), axis=-1).astype(jnp.int32)  # [B]
    token = jnp.where(done, cfg.pad_id, token)
    tokens = tokens.at[:, t].set(token)
    prefix = jnp.where(t + 1 < max_new_tokens, prefix.at[:, jnp.minimum(t + 1, max_new_tokens - 1)]
                       .set(token), prefix)
    return prefix, tokens, done | (token == cfg.eos_id)

  _, tokens, _ = jax.lax.fori_loop(0, max_new_tokens, step, (prefix, tokens, done))
  return tokens
