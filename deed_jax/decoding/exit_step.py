"""One decoding step through the multi-exit decoder, shared by greedy and beam search.

At position p every decoder layer j runs only if some live row has not exited yet (one scalar for the
whole batch, DEED.md invariant 5); each row takes its token from its own first confident layer.

How a layer runs depends on the exit mode:
- deed / oracle / static / fixed: layer j runs on the block [n_j, p] — the positions earlier steps
  skipped at layer j (the frontier holds exactly layer j-1's output there, invariant 2) plus p — in
  blocks of at most `backfill_chunk` positions written into the preallocated KV cache. Every feature
  is the full model's. (Only deed has blocks longer than one position.)
- copy (CALM): layer j runs on p alone; for a row that exited below j, layer j's K/V at p are projected
  from the row's exit state instead, and never recomputed.

No `lax.cond` carries a KV cache (a pass-through `cond` makes XLA copy it, jax#16661): the deeper
layers sit inside a `while_loop` that runs at most once, entered only if some row still needs them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding.confidence import confidence_from_log_probs
from deed_jax.decoding.config import DecodeConfig
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.models.transformer import KVCache, padding_bias

Array = jax.Array


class DecoderState(NamedTuple):
  """What the decoder keeps between steps. R rows (batch, or batch x beams); T_c = N + chunk (slack
  for padded blocks: `dynamic_update_slice` clamps out-of-range starts, jax#9094)."""
  caches: tuple[KVCache, ...]  # L x (k, v) [R, H, T_c, Dh]
  fill: Array  # [L] int32: positions [0, fill[j]) are computed at layer j (batch-wide)
  frontier: Array  # [R, T_c, D]: output of the deepest computed layer at each position


class StepExit(NamedTuple):
  """Per row, what the step emitted; rows that were not live get zeros."""
  token: Array  # [R] int32, argmax of the exit's logits
  log_prob: Array  # [R] float32, log-probability of `token` at the exit
  features: Array  # [R, D] exit features (adapter, final norm) the token came from
  exit_layer: Array  # [R] int32, 1-based
  confidence: Array  # [R] float32
  layers_run: Array  # [] int32, decoder layers executed for the batch
  backfilled: Array  # [L] int32, deferred positions computed just in time per layer


def reorder_rows(state: DecoderState, rows: Array) -> DecoderState:
  """Beam search: row r continues the history of row rows[r] ([R] int32). Fill pointers are
  batch-wide, so only the caches and the frontier move."""
  take = lambda x: jnp.take(x, rows, axis=0)
  caches = tuple(KVCache(take(c.k), take(c.v)) for c in state.caches)
  return DecoderState(caches, state.fill, take(state.frontier))


def block_widths(chunk: int) -> list[int]:
  """The widths a layer call runs a deed block at: powers of two below `chunk` (for a block's last
  r < chunk positions), and `chunk` itself."""
  return sorted({2**i for i in range(chunk.bit_length()) if 2**i < chunk} | {chunk})


def _run_once(predicate: Array, fn, carry):
  """fn(carry) if predicate else carry, as a `while_loop` that runs at most once."""
  body = lambda c: (jnp.bool_(False), fn(c[1]))
  return jax.lax.while_loop(lambda c: c[0], body, (predicate, carry))[1]


class ExitStep:
  """Built once per decode call; `init_state()` and `__call__(state, position, last_token, live)`.

  `encoder_out` [R, S, D] and `encoder_mask` [R, S] are per row (beam search repeats them). `config`
  must be `resolve`d; `threshold` may be traced.
  """

  def __init__(self, model: MultiExitEncoderDecoder, encoder_out: Array, encoder_mask: Array,
               config: DecodeConfig, threshold: Array | float):
    cfg = model.config
    self.model, self.config, self.threshold = model, config, threshold
    self.decoder = model.decoder
    self.rows = encoder_out.shape[0]
    self.num_layers = cfg.decoder_layers
    # Only deed ever runs a layer over more than the current position (a backfill block).
    self.chunk = config.backfill_chunk if config.exit_mode == "deed" else 1
    self.widths = block_widths(self.chunk) if self.chunk > 1 else []
    self.cache_length = config.max_new_tokens + self.chunk  # Slack for padded blocks (jax#9094).
    self.last_layer = (config.fixed_exit_layer if config.exit_mode == "fixed" else self.num_layers) - 1
    self.cross_kv = self.decoder.cross_kv(encoder_out)  # L x 2 x [R, H, S, Dh], once per call
    self.cross_bias = padding_bias(encoder_mask)  # [R, 1, 1, S]
    self.embedding = model.token_embedding[...]
    self.dtype = jnp.dtype(cfg.dtype)
    self.d_model = cfg.d_model
    self.cache_shape = (self.rows, cfg.num_heads, self.cache_length, cfg.resolved_head_dim)

  def init_state(self) -> DecoderState:
    zeros = lambda: jnp.zeros(self.cache_shape, self.dtype)
    return DecoderState(
        caches=tuple(KVCache(zeros(), zeros()) for _ in range(self.num_layers)),
        fill=jnp.zeros((self.num_layers,), jnp.int32),
        frontier=jnp.zeros((self.rows, self.cache_length, self.d_model), self.dtype))

  def _run_layer(self, j: int, frontier: Array, cache: KVCache, start: Array, position: Array
                 ) -> tuple[Array, KVCache]:
    """Layer j over positions [start, position] into cache and frontier.

    Whole blocks of `chunk` positions first; the remaining r < chunk positions then go as one call of
    the smallest width in `self.widths` that holds them (a padded call costs far less than r
    one-position calls; the usual block is the current position alone, a width-1 call). Padding runs
    past `position` into the cache's slack: those positions are recomputed when their turn comes, and
    the causal mask keeps them out of every real query's view.
    """
    key_positions = jnp.arange(self.cache_length)

    def block(width: int):
      def body(carry):
        block_start, frontier, cache = carry
        x = jax.lax.dynamic_slice_in_dim(frontier, block_start, width, axis=1)  # [R, W, D]
        bias = self.decoder.self_bias(block_start + jnp.arange(width), key_positions)  # [1,1|H,W,T]
        y, cache = self.decoder.layers[j](x, bias, cross_kv=self.cross_kv[j],
                                          cross_bias=self.cross_bias, cache=cache,
                                          cache_index=block_start)
        frontier = jax.lax.dynamic_update_slice_in_dim(frontier, y.astype(frontier.dtype), block_start,
                                                       axis=1)
        return block_start + width, frontier, cache
      return body

    remaining = lambda c: position + 1 - c[0]
    carry = jax.lax.while_loop(lambda c: remaining(c) >= self.chunk, block(self.chunk),
                               (start, frontier, cache))
    smaller = 0
    for width in self.widths:  # At most one of these runs, once.
      fits = lambda c, smaller=smaller, width=width: (remaining(c) > smaller) & (remaining(c) <= width)
      carry = jax.lax.while_loop(fits, block(width), carry)
      smaller = width
    _, frontier, cache = carry
    return frontier, cache

  def _exit_head(self, j: int, hidden: Array, exits: tuple) -> tuple:
    """Exit j's confidence for rows still undecided; the confident ones take their token there."""
    config = self.config
    decided, token, log_prob, features, exit_layer, conf, exit_hidden = exits
    layer_features = self.decoder.exit_features(hidden, j)  # [R, D]
    log_probs = jax.nn.log_softmax(self.model.logits(layer_features).astype(jnp.float32))  # [R, V]
    layer_conf = confidence_from_log_probs(log_probs, config.confidence)  # [R]
    if config.exit_mode in ("deed", "oracle", "copy"):
      allowed = j >= config.min_exit_layer - 1
      confident = (layer_conf >= self.threshold) & allowed | (j == self.last_layer)
    else:
      confident = jnp.full((self.rows,), j == self.last_layer)
    take = ~decided & confident  # [R]
    pick = lambda new, old: jnp.where(take.reshape(take.shape + (1,) * (old.ndim - 1)), new, old)
    return (decided | take, pick(jnp.argmax(log_probs, axis=-1).astype(jnp.int32), token),
            pick(log_probs.max(axis=-1), log_prob), pick(layer_features, features),
            pick(jnp.int32(j + 1), exit_layer), pick(layer_conf, conf), pick(hidden, exit_hidden))

  def __call__(self, state: DecoderState, position: Array, last_token: Array, live: Array
               ) -> tuple[DecoderState, StepExit]:
    """Decode `position` (traced []) from `last_token` [R]; rows with `live` False never force depth.

    Layers j+1.. sit inside a `while_loop` that runs at most once, entered only if some row still
    needs them: skipping the rest of the stack costs one predicate. (A `lax.cond` would copy the
    caches it carries; on XLA:CPU a run-once loop is also cheaper.)
    """
    config, rows, p = self.config, self.rows, position
    x = self.decoder.embed(last_token[:, None], p[None], self.embedding)  # [R, 1, D]
    frontier = jax.lax.dynamic_update_slice_in_dim(state.frontier, x.astype(self.dtype), p, axis=1)
    zeros_f = jnp.zeros((rows,), jnp.float32)
    # decided, token, log_prob, features, exit_layer, confidence, exit_hidden
    exits = (~live, jnp.zeros((rows,), jnp.int32), zeros_f, jnp.zeros((rows, self.d_model), self.dtype),
             jnp.zeros((rows,), jnp.int32), zeros_f, jnp.zeros((rows, self.d_model), self.dtype))
    counters = (jnp.int32(0), jnp.zeros((self.num_layers,), jnp.int32))  # layers run, backfilled

    def layers_from(j: int, carry: tuple) -> tuple:
      frontier, caches, fill, exits, (layers_run, backfilled) = carry
      start = p if config.exit_mode == "copy" else fill[j]
      caches = list(caches)
      frontier, caches[j] = self._run_layer(j, frontier, caches[j], start, p)
      counters = (layers_run + 1, backfilled.at[j].set(p - start))
      if config.exit_mode not in ("static", "fixed") or j == self.last_layer:  # Else no exit here.
        hidden = jax.lax.dynamic_index_in_dim(frontier, p, axis=1, keepdims=False)  # [R, D]
        exits = self._exit_head(j, hidden, exits)
      carry = (frontier, tuple(caches), fill.at[j].set(p + 1), exits, counters)
      if j == self.last_layer:
        return carry
      deeper = jnp.any(live) if config.exit_mode == "oracle" else jnp.any(~exits[0])
      return _run_once(deeper, functools.partial(layers_from, j + 1), carry)

    # The caller only steps while some row is live, so layer 1 always runs.
    frontier, caches, fill, exits, (layers_run, backfilled) = layers_from(
        0, (frontier, state.caches, state.fill, exits, counters))
    _, token, log_prob, features, exit_layer, conf, exit_hidden = exits
    if config.exit_mode == "copy":
      caches = self._copy_exit_state(list(caches), p, exit_layer, exit_hidden)
    out = StepExit(token, log_prob, features, exit_layer, conf, layers_run, backfilled)
    return DecoderState(tuple(caches), fill, frontier), out

  def _copy_exit_state(self, caches: list[KVCache], p: Array, exit_layer: Array, exit_hidden: Array
                       ) -> list[KVCache]:
    """CALM: layers above a row's exit get K/V at p projected from its exit state [R, D]."""
    for j in range(self.num_layers):
      copied = (exit_layer > 0) & (exit_layer < j + 1)  # [R]
      k_copy, v_copy = self.decoder.layers[j].self_kv(exit_hidden[:, None])  # [R, H, 1, Dh]
      new = []
      for cached, copy in ((caches[j].k, k_copy), (caches[j].v, v_copy)):
        current = jax.lax.dynamic_slice_in_dim(cached, p, 1, axis=2)  # [R, H, 1, Dh]
        value = jnp.where(copied[:, None, None, None], copy.astype(cached.dtype), current)
        new.append(jax.lax.dynamic_update_slice_in_dim(cached, value, p, axis=2))
      caches[j] = KVCache(*new)
    return caches
