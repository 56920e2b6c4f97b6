"""Greedy decoding with step-level early exit and exact just-in-time backfill (DEED).

One `lax.while_loop` over tokens. At step p every decoder layer j sits behind a `lax.cond` whose
predicate is one scalar for the batch: "some live row has not exited yet". Layer j runs on the block
of positions [n_j, p]: the positions earlier steps skipped at layer j (their frontier state is exactly
layer j-1's output, DEED.md invariant 2) plus the current one, in chunks of `backfill_chunk` written
into the preallocated KV cache. So every computed feature is the full model's, and tokens equal those
of the naive reference's "first confident layer" rule.

Exit modes here: deed (skip deeper layers once every live row is confident), oracle (run every layer,
take the first confident), static (all layers), fixed (layers 1..k).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding.confidence import confidence
from deed_jax.decoding.config import DecodeConfig
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.models.transformer import KVCache, padding_bias

Array = jax.Array


class GreedyOutput(NamedTuple):
  tokens: Array  # [B, N] int32, pad after EOS
  exit_layers: Array  # [B, N] int32, 1-based; 0 after EOS
  confidences: Array  # [B, N] float32; 0 after EOS
  layers_run: Array  # [N] int32: decoder layers executed at each step (0 once all rows ended)
  backfilled: Array  # [L] int32: deferred positions computed just in time, per layer


class _Step(NamedTuple):
  """While-loop state. T_c = max_new_tokens + backfill_chunk (slack: DUS clamps, jax#9094)."""
  position: Array  # [] int32, the position being decoded
  last_token: Array  # [B] int32, input at `position`
  done: Array  # [B] bool
  caches: tuple[KVCache, ...]  # L x (k, v) [B, H, T_c, Dh]
  fill: Array  # [L] int32: positions [0, fill[j]) are computed at layer j
  frontier: Array  # [B, T_c, D]: output of the deepest computed layer at each position
  out: GreedyOutput


def greedy_decode(model: MultiExitEncoderDecoder, encoder_inputs: dict, config: DecodeConfig,
                  threshold: Array | float) -> GreedyOutput:
  """Pure function of the model's arrays (call it under jit). `config` must be `resolve`d."""
  cfg = model.config
  decoder = model.decoder
  num_layers, n, chunk = cfg.decoder_layers, config.max_new_tokens, config.backfill_chunk
  cache_length = n + chunk
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  batch = encoder_out.shape[0]
  cross_kv = decoder.cross_kv(encoder_out)  # L x 2 x [B, H, S, Dh], once per call
  cross_bias = padding_bias(encoder_mask)  # [B, 1, 1, S]
  embedding = model.token_embedding[...]
  key_positions = jnp.arange(cache_length)
  heads, head_dim = cfg.num_heads, cfg.resolved_head_dim
  cache_shape = (batch, heads, cache_length, head_dim)
  dtype = jnp.dtype(cfg.dtype)

  if config.exit_mode == "fixed":
    last_layer = config.fixed_exit_layer - 1
  else:
    last_layer = num_layers - 1

  def run_layer(j: int, frontier: Array, cache: KVCache, start: Array, position: Array):
    """Layer j over positions [start, position], chunk by chunk: -> (frontier, cache)."""

    def body(carry):
      chunk_start, frontier, cache = carry
      x = jax.lax.dynamic_slice_in_dim(frontier, chunk_start, chunk, axis=1)  # [B, C, D]
      query_positions = chunk_start + jnp.arange(chunk)
      bias = decoder.self_bias(query_positions, key_positions)  # [1, 1|H, C, T_c]
      y, cache = decoder.layers[j](x, bias, cross_kv=cross_kv[j], cross_bias=cross_bias, cache=cache,
                                   cache_index=chunk_start)
      frontier = jax.lax.dynamic_update_slice_in_dim(frontier, y.astype(frontier.dtype), chunk_start,
                                                     axis=1)
      return chunk_start + chunk, frontier, cache

    _, frontier, cache = jax.lax.while_loop(lambda c: c[0] <= position, body, (start, frontier, cache))
    return frontier, cache

  def step(state: _Step) -> _Step:
    p = state.position
    x = decoder.embed(state.last_token[:, None], p[None], embedding)  # [B, 1, D]
    frontier = jax.lax.dynamic_update_slice_in_dim(state.frontier, x.astype(dtype), p, axis=1)
    decided = state.done  # Rows that ended never force depth.
    token = jnp.full((batch,), config.pad_id, jnp.int32)
    exit_layer = jnp.zeros((batch,), jnp.int32)
    conf = jnp.zeros((batch,), jnp.float32)
    caches, fill, backfilled = list(state.caches), state.fill, state.out.backfilled
    layers_run = jnp.int32(0)
    for j in range(last_layer + 1):
      if config.exit_mode in ("deed", "fixed", "static"):
        predicate = jnp.any(~decided)
      else:  # oracle: every layer at every step.
        predicate = jnp.any(~state.done)

      def run(operands, j=j):
        frontier, cache, fill, decided, token, exit_layer, conf = operands
        start = fill[j]
        frontier, cache = run_layer(j, frontier, cache, start, p)
        hidden = jax.lax.dynamic_index_in_dim(frontier, p, axis=1, keepdims=False)  # [B, D]
        logits = model.logits(decoder.exit_features(hidden, j))  # [B, V]
        layer_conf = confidence(logits, config.confidence)  # [B]
        if config.exit_mode in ("deed", "oracle"):
          allowed = j >= config.min_exit_layer - 1
          confident = (layer_conf >= threshold) & allowed | (j == last_layer)
        else:
          confident = jnp.full((batch,), j == last_layer)
        take = ~decided & confident
        token = jnp.where(take, jnp.argmax(logits, axis=-1).astype(jnp.int32), token)
        exit_layer = jnp.where(take, j + 1, exit_layer)
        conf = jnp.where(take, layer_conf, conf)
        return frontier, cache, fill.at[j].set(p + 1), decided | take, token, exit_layer, conf

      operands = (frontier, caches[j], fill, decided, token, exit_layer, conf)
      backfilled = backfilled.at[j].add(jnp.where(predicate, p - fill[j], 0))
      layers_run = layers_run + predicate.astype(jnp.int32)
      frontier, caches[j], fill, decided, token, exit_layer, conf = jax.lax.cond(
          predicate, run, lambda operands: operands, operands)

    live = ~state.done
    token = jnp.where(live, token, config.pad_id)
    out = state.out
    out = GreedyOutput(out.tokens.at[:, p].set(token),
                       out.exit_layers.at[:, p].set(jnp.where(live, exit_layer, 0)),
                       out.confidences.at[:, p].set(jnp.where(live, conf, 0.0)),
                       out.layers_run.at[p].set(layers_run), backfilled)
    return _Step(p + 1, token, state.done | (token == config.eos_id), tuple(caches), fill, frontier, out)

  init = _Step(
      position=jnp.int32(0),
      last_token=jnp.full((batch,), config.bos_id, jnp.int32),
      done=jnp.zeros((batch,), bool),
      caches=tuple(KVCache(jnp.zeros(cache_shape, dtype), jnp.zeros(cache_shape, dtype))
                   for _ in range(num_layers)),
      fill=jnp.zeros((num_layers,), jnp.int32),
      frontier=jnp.zeros((batch, cache_length, cfg.d_model), dtype),
      out=GreedyOutput(jnp.full((batch, n), config.pad_id, jnp.int32), jnp.zeros((batch, n), jnp.int32),
                       jnp.zeros((batch, n), jnp.float32), jnp.zeros((n,), jnp.int32),
                       jnp.zeros((num_layers,), jnp.int32)))
  final = jax.lax.while_loop(lambda s: (s.position < n) & jnp.any(~s.done), step, init)
  return final.out
