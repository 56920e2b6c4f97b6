"""One decoding step through the multi-exit decoder, shared by greedy and beam search.

At position p every decoder layer j runs only if some live row has not exited yet (one scalar for the
whole batch: the batch rule, docs/decoding.md); each row takes its token from its own first confident
layer. The LM head runs only where it is needed: at the layers a row may exit at for head confidences
(max_prob, margin, entropy), and once per token, at the exits taken, for the head-free `state` and
`classifier`.

What the exit modes do differently is decided by one `ExitMode` object per mode (`exit_modes`), chosen
when the step is built; the loop below never looks at the mode's name:
- deed: layer j runs on the block [n_j, p] — the positions earlier steps skipped at layer j (the
  frontier holds exactly layer j-1's output there: the block rule), in calls of at most
  `backfill_chunk` positions, then p alone — written into the preallocated KV cache. Every feature is
  the full model's. (Only deed and speculative drafting defer positions; the other modes run p
  alone.)
- copy (CALM): for a row that exited below j, layer j's K/V at p are projected from the row's exit
  state after the stack, and never recomputed.
- speculative (`speculative`): the step drafts through layers 1..d and leaves the layers above
  deferred; `verify` then runs every layer over the drafted block, one block call per layer.

No `lax.cond` carries a KV cache (XLA copied the caches through every `cond` form tried, see
docs/decoding.md): the deeper layers sit inside `while_loop`s that run at most once, entered only
when needed. The usual step computes only the current position at every layer it visits: it runs as
one nested run-once loop per layer (`layers_from`), whose predicate also asks that the next layer
has nothing deferred (modes that never exit early run straight to their top layer, no predicate).
Where deed meets a layer with deferred positions, that chain stops and one more run-once loop
enters the backfilling layers (`backfilling_layers`), which run the deferred blocks and then p. So
a step that backfills nothing evaluates at most two predicates per layer it runs (each a
device-to-host round trip on GPUs); one that backfills pays more, once.

A prompt (`prompts`) is computed as blocks, never token by token; its rows are left-padded so that every
row decodes at the same cache slot p, with its own positions (slot minus padding) and its padding slots
masked out. `init_state` computes it, one block per layer, through the layers every token runs (up to
the first a row may exit at; for the modes that do not defer, up to the top). Above those, deed defers
the prompt like any skipped position: a layer computes the prompt's slots, as one block whatever
`backfill_chunk` is, only when a token first goes that deep, so a decode whose tokens exit shallow
never pays for the prompt at the layers it skips.

The model is reached only through the decoder's incremental seam (`Decoder.init_cache`,
`cross_memory`, `embed`, `run_block`, `exit`, `exit_probability`, and `self_kv` for copy mode) and the
shared head (`model.logits`); the caches only through `KVCache`'s operations.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding import processors
from deed_jax.decoding.confidence import confidence_from_log_probs, needs_head, state_confidence
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.exit_modes import EXIT_MODES
from deed_jax.decoding.loops import run_once
from deed_jax.decoding.prompts import Prompt, start_prompt
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.models.kv_cache import KVCache

Array = jax.Array


class DecoderState(NamedTuple):
  """What the decoder keeps between steps. R rows (batch, or batch x beams); T_c = P - 1 + N + chunk
  cache slots: the prompt's, the new tokens', and slack for padded blocks (`dynamic_update_slice`
  clamps out-of-range starts, see docs/decoding.md)."""

  caches: tuple[KVCache, ...]  # L x (k, v) [R, H, T_c, Dh]
  fill: Array  # [L] int32: slots [0, fill[j]) are computed at layer j (batch-wide)
  frontier: Array  # [R, T_c, D]: output of the deepest computed layer at each position

  def take_rows(self, rows: Array) -> DecoderState:
    """Beam search: row r continues the history of row rows[r] ([R] int32). Fill pointers are
    batch-wide, so only the caches and the frontier move."""
    return DecoderState(
      tuple(c.take_rows(rows) for c in self.caches),
      self.fill,
      jnp.take(self.frontier, rows, axis=0),
    )

  def rewind(self, slot: Array) -> DecoderState:
    """Forget every layer's slots from `slot` on (speculative decoding's rejected drafts): they are
    recomputed, and their K/V overwritten, when decoding reaches them again."""
    return self._replace(fill=jnp.minimum(self.fill, slot))


class ExitChoice(NamedTuple):
  """Each row's exit at the current step, as the layers go up; a decided row keeps its choice. What
  the step emits: rows that were not live get zeros. (With a head-free confidence, `token`,
  `log_prob` and `log_probs` are filled after the stack.)"""

  decided: Array  # [R] bool: the row has its token (or is not live)
  token: Array  # [R] int32, argmax of the exit's logits
  log_prob: Array  # [R] float32, log-probability of `token` at the exit
  log_probs: Array | None  # [R, V] float32 at the exit, kept only when asked for (beam search)
  features: Array  # [R, D] exit features (adapter, final norm) the token came from
  exit_layer: Array  # [R] int32, 1-based; 0 while undecided
  confidence: Array  # [R] float32
  hidden: Array  # [R, D] the exit layer's output (copy mode projects skipped layers' K/V from it)


class StepWork(NamedTuple):
  """The decoder work a step did, for the whole batch."""

  layers_run: Array  # [] int32, decoder layers executed
  backfilled: Array  # [L] int32, deferred positions computed just in time per layer


class Verified(NamedTuple):
  """The full model's greedy choice at each slot of a verified block [p, p + W) (W = max_draft + 1;
  only the slots before the block's end are meaningful)."""

  token: Array  # [R, W] int32
  log_prob: Array  # [R, W] float32
  confidence: Array  # [R, W] float32, the last layer's (config.confidence)


class _LayerCarry(NamedTuple):
  """What flows up the layer stack within one step. The state at the current position also travels
  on its own (`current`): a layer reads its input at p from there, so the one-position path only
  ever writes the frontier, which lets XLA update it in place without copying it (reading it back
  from the frontier made XLA:CPU copy the whole frontier twice per layer)."""

  frontier: Array  # [R, T_c, D]
  current: Array  # [R, 1, D]: the deepest computed layer's output at the current position
  caches: tuple[KVCache, ...]  # L x (k, v) [R, H, T_c, Dh]
  fill: Array  # [L] int32
  choice: ExitChoice
  work: StepWork


class _Position(NamedTuple):
  """What every layer of one step reads about the position being decoded."""

  index: Array  # [] int32, p: the cache slot being decoded (the same in every row)
  live: Array  # [R] bool: rows that have not ended
  bias: Array  # [1|R, 1|H, 1, T_c]: every layer's self-attention bias at p
  history: processors.History | None  # each row's sequence so far, when constraints need it


def block_widths(chunk: int) -> list[int]:
  """The widths a layer call runs a deed block at: powers of two below `chunk` (for a block's last
  r < chunk positions), and `chunk` itself."""
  return sorted({2**i for i in range(chunk.bit_length()) if 2**i < chunk} | {chunk})


class DecodeStep:
  """One token through the exits; built once per decode call: `init_state()` (the prompt's slots
  computed), then `__call__(state, slot, last_token, live)` per slot from `first_slot`.

  `encoder_out` [R, S, D], `encoder_mask` [R, S] and `prompt` (left-padded, `prompts.Prompt`; None:
  the start token alone) are per row (beam search repeats them). `config` must be `resolve`d;
  `threshold` may be traced. With `log_probs` the step also emits each row's log-probabilities over
  the vocabulary at its exit (beam search scores all continuations).
  """

  def __init__(
    self,
    model: MultiExitEncoderDecoder,
    encoder_out: Array,
    encoder_mask: Array,
    config: DecodeConfig,
    threshold: Array | float,
    prompt: Prompt | None = None,
    *,
    log_probs: bool = False,
  ):
    cfg = model.config
    self.model, self.config, self.threshold = model, config, threshold
    self.mode = EXIT_MODES[config.exit_mode]
    self.keep_log_probs = log_probs
    self.head_at_exits = needs_head(config.confidence)  # Else the head runs once, after the stack.
    self.constrained = processors.active(config)  # HF's generation constraints, on every exit
    self.early_exits = config.early_exits(cfg.decoder_layers)
    self.decoder = model.decoder
    self.rows = encoder_out.shape[0]
    self.num_layers = cfg.decoder_layers
    self.chunk = self.mode.backfill_chunk(config)
    self.widths = block_widths(self.chunk) if self.chunk > 1 else []
    self.prompt = start_prompt(self.rows, config.bos_id) if prompt is None else prompt
    # Every row's last prompt token (its first new token's input) sits at this slot.
    self.first_slot = self.prompt.length - 1
    # Rows' padding slots; None when no row has any (prompts of one token: the start token).
    self.pad = self.prompt.pad if self.first_slot > 0 else None
    # speculative: the slots one verification scores (max_draft + 1; 0 for the other modes).
    self.verify_width = self.mode.verify_width(config)
    # + slack for padded blocks and verified blocks
    self.cache_length = self.first_slot + config.max_new_tokens + max(self.chunk, self.verify_width)
    self.last_layer = self.mode.top_layer(config, self.num_layers) - 1  # 0-based
    # The layers init_state computes the prompt through (0-based, inclusive): deed defers the rest.
    first_exit = next((j for j, e in enumerate(self.early_exits) if e), self.last_layer)
    self.prompt_top = min(first_exit, self.last_layer) if self.mode.defers else self.last_layer
    self.memory = self.decoder.cross_memory(encoder_out, encoder_mask)  # once per call
    self.dtype = jnp.dtype(cfg.dtype)
    self.d_model = cfg.d_model

  def init_state(self) -> DecoderState:
    """Empty caches, then the prompt's slots before `first_slot` computed through `prompt_top` (one
    block per layer, as a backfill: a prompt is never decoded token by token); deed's deeper layers
    hold them deferred."""
    state = DecoderState(
      caches=self.decoder.init_cache(self.rows, self.cache_length),
      fill=jnp.zeros((self.num_layers,), jnp.int32),
      frontier=jnp.zeros((self.rows, self.cache_length, self.d_model), self.dtype),
    )
    if self.first_slot == 0:
      return state
    width = self.first_slot
    x = self.decoder.embed(self.prompt.tokens[:, :width], self._positions(jnp.arange(width)))
    frontier = jax.lax.dynamic_update_slice_in_dim(state.frontier, x.astype(self.dtype), 0, axis=1)
    caches = list(state.caches)
    for j in range(self.prompt_top + 1):  # [R, P - 1, D] through layer j
      _, frontier, caches[j] = self._block(j, width, width)((0, frontier, caches[j]))
    fill = jnp.where(jnp.arange(self.num_layers) <= self.prompt_top, width, 0).astype(jnp.int32)
    return DecoderState(tuple(caches), fill, frontier)

  def _positions(self, slots: Array) -> Array:
    """Each row's positions at cache `slots` [W]: [W], or [R, W] when rows have padding slots (whose
    positions clip to 0; they are masked out anyway)."""
    if self.pad is None:
      return slots
    return jnp.maximum(slots[None, :] - self.pad[:, None], 0)

  # -----------------------------------------------------------------------------------------------
  # The step: layers up the stack until every row has its token.
  # -----------------------------------------------------------------------------------------------
  def __call__(
    self,
    state: DecoderState,
    position: Array,
    last_token: Array,
    live: Array,
    history: processors.History | None = None,
  ) -> tuple[DecoderState, ExitChoice, StepWork]:
    """Decode slot `position` (traced []) from `last_token` [R]; rows with `live` False never force
    depth. `history` (each row's sequence so far) is needed when the config has constraints.

    Layers j+1.. sit inside a `while_loop` that runs at most once, entered only if some row still
    needs them: skipping the rest of the stack costs one predicate. The layout is in the module
    docstring.
    """
    p = position
    x = self.decoder.embed(last_token[:, None], self._positions(p[None])).astype(self.dtype)
    frontier = jax.lax.dynamic_update_slice_in_dim(state.frontier, x, p, axis=1)  # x [R, 1, D]
    if self.constrained and history is None:
      raise ValueError("A DecodeConfig with generation constraints needs each row's history.")
    at = _Position(p, live, self.decoder.block_bias(p, 1, self.cache_length, self.pad), history)
    work = StepWork(jnp.int32(0), jnp.zeros((self.num_layers,), jnp.int32))
    # The caller only steps while some row is live, so layer 1 always runs.
    top = self._layers_from(
      at, 0, _LayerCarry(frontier, x, state.caches, state.fill, self._undecided(live), work)
    )
    if self.mode.defers and self.mode.exits_early and self.num_layers > 1:
      top = run_once(
        self._wants_deeper(at, top), functools.partial(self._backfilling_layers, at), top
      )
    choice = top.choice if self.head_at_exits else self._head_after_stack(top.choice, history)
    caches = self.mode.after_stack(self.decoder, top.caches, p, choice.exit_layer, choice.hidden)
    return DecoderState(tuple(caches), top.fill, top.frontier), choice, top.work

  def _undecided(self, live: Array) -> ExitChoice:
    """Every live row undecided; rows that are not live count as decided, with zeros."""
    zeros_f = jnp.zeros((self.rows,), jnp.float32)
    zeros_d = jnp.zeros((self.rows, self.d_model), self.dtype)
    zeros_i = jnp.zeros((self.rows,), jnp.int32)
    keep = self.keep_log_probs and self.head_at_exits
    log_probs = jnp.zeros((self.rows, self.model.config.vocab_size)) if keep else None
    return ExitChoice(
      decided=~live,
      token=zeros_i,
      log_prob=zeros_f,
      log_probs=log_probs,
      features=zeros_d,
      exit_layer=zeros_i,
      confidence=zeros_f,
      hidden=zeros_d,
    )

  def _wants_deeper(self, at: _Position, carry: _LayerCarry) -> Array:
    return self.mode.wants_deeper(at.live, carry.choice.decided)

  def _layers_from(self, at: _Position, j: int, carry: _LayerCarry) -> _LayerCarry:
    """Layer j (nothing deferred there), then the deeper layers as long as some row needs them and
    has nothing deferred: one nested run-once loop per layer. (Modes that never exit early run
    every layer up to the top: straight-line code.)"""
    carry = self._layer(at, j, carry)
    if j == self.last_layer:
      return carry
    if not self.mode.exits_early:
      # Every row goes to the top layer (which speculative drafting never leaves deferred below
      # it): straight-line code, no predicate.
      return self._layers_from(at, j + 1, carry)
    deeper = self._wants_deeper(at, carry)
    if self.mode.defers:
      deeper = deeper & (carry.fill[j + 1] == at.index)
    return run_once(deeper, functools.partial(self._layers_from, at, j + 1), carry)

  def _backfilling_layers(self, at: _Position, carry: _LayerCarry) -> _LayerCarry:
    """deed, once `_layers_from` stopped at a layer m with deferred positions while some row is
    undecided: layers m, m+1, ... with their backfill. Deferred layers form a suffix of the stack
    (fill never grows with depth), so every layer from m on has deferred positions. Flat: layer j
    runs when it is next (layers_run == j) and some row is undecided."""
    for j in range(1, self.last_layer + 1):
      carry = run_once(
        self._wants_deeper(at, carry) & (carry.work.layers_run == j),
        functools.partial(self._layer, at, j, backfill=True),
        carry,
      )
    return carry

  # -----------------------------------------------------------------------------------------------
  # Speculative decoding's verification: a drafted block through the whole stack, as a backfill.
  # -----------------------------------------------------------------------------------------------
  def verify(
    self,
    state: DecoderState,
    position: Array,
    end: Array,
    last_input: Array,
    history: processors.History | None = None,
  ) -> tuple[DecoderState, Verified, StepWork]:
    """speculative: slots [position, end) hold a round's inputs (the last emitted token, then the
    drafts), which the draft steps computed through the draft layer, all but the last one, whose
    input is `last_input` [R]. Every layer computes its slots up to `end` (deed's backfill: one call
    per layer when the block fits `backfill_chunk`), and the last layer's exit scores the slots
    [position, position + W). `history` holds each row's tokens with the drafts in place, new at
    `position`; the constraints see the block's slot i with i more."""
    width, top = self.verify_width, self.num_layers - 1
    x = self.decoder.embed(last_input[:, None], self._positions((end - 1)[None]))  # [R, 1, D]
    frontier = jax.lax.dynamic_update_slice_in_dim(state.frontier, x.astype(self.dtype), end - 1, 1)
    caches = list(state.caches)
    for j in range(self.num_layers):
      if j == top:  # the last layer's input, for the state confidence
        previous = jax.lax.dynamic_slice_in_dim(frontier, position, width, axis=1)  # [R, W, D]
      carry = (state.fill[j], frontier, caches[j])
      if j <= self.last_layer:  # a draft layer: only the last input, at end - 1, is new to it
        carry = self._block(j, 1, end)(carry)
      elif self.chunk < width:
        carry = (None, *self._backfill(j, frontier, caches[j], state.fill[j], end))
      else:  # [position, end) as one block of W slots (padding past `end` is overwritten later)
        if self.first_slot > 0:  # the first round: a deferred prompt's slots, as one block
          carry = run_once(carry[0] < self.first_slot, self._block(j, self.first_slot, end), carry)
        carry = self._block(j, width, end)(carry)
      frontier, caches[j] = carry[1], carry[2]
    hidden = jax.lax.dynamic_slice_in_dim(frontier, position, width, axis=1)  # [R, W, D]
    features = self.decoder.exit(top, hidden)
    log_probs = jax.nn.log_softmax(self.model.logits(features).astype(jnp.float32))  # [R, W, V]
    if self.constrained:
      log_probs = jnp.stack(
        [
          processors.process(
            log_probs[:, i], history._replace(new=history.new + i), self.config, self.prompt.length
          )
          for i in range(width)
        ],
        axis=1,
      )
    verified = Verified(
      token=jnp.argmax(log_probs, axis=-1).astype(jnp.int32),
      log_prob=log_probs.max(axis=-1),
      confidence=self._confidence(top, hidden, previous, features, log_probs),
    )
    work = StepWork(jnp.int32(self.num_layers), end - state.fill)
    filled = jnp.full((self.num_layers,), end, jnp.int32)
    return DecoderState(tuple(caches), filled, frontier), verified, work

  def _layer(
    self, at: _Position, j: int, carry: _LayerCarry, backfill: bool = False
  ) -> _LayerCarry:
    """Layer j at p (after its deferred positions, with `backfill`), then its exit."""
    p = at.index
    frontier, cache, backfilled = carry.frontier, carry.caches[j], carry.work.backfilled
    if backfill:  # Leaves the frontier at p (layer j's input there) as it was.
      start = carry.fill[j]
      frontier, cache = self._backfill(j, frontier, cache, start, p)
      backfilled = backfilled.at[j].set(p - start)
    # [R, 1, D]
    hidden, cache = self.decoder.run_block(j, carry.current, p, cache, self.memory, at.bias)
    hidden = hidden.astype(self.dtype)
    frontier = jax.lax.dynamic_update_slice_in_dim(frontier, hidden, p, axis=1)
    choice = carry.choice
    if self.early_exits[j] or j == self.last_layer:  # Elsewhere no exit: no head, no confidence.
      choice = self._exit(j, hidden[:, 0], carry.current[:, 0], choice, at.history)
    caches = carry.caches[:j] + (cache,) + carry.caches[j + 1 :]
    work = StepWork(carry.work.layers_run + 1, backfilled)
    return _LayerCarry(frontier, hidden, caches, carry.fill.at[j].set(p + 1), choice, work)

  # -----------------------------------------------------------------------------------------------
  # deed's just-in-time backfill: a layer's deferred positions as blocks.
  # -----------------------------------------------------------------------------------------------
  def _block(self, j: int, width: int, position: Array, deferred_only: bool = False):
    """-> body((block_start, frontier, cache)): deed's backfill, layer j over [block_start,
    block_start + width) into the cache and the frontier. With `deferred_only`, positions from
    `position` on (padding) keep their frontier values (at `position`: layer j's input there)."""

    def body(carry):
      block_start, frontier, cache = carry
      x = jax.lax.dynamic_slice_in_dim(frontier, block_start, width, axis=1)  # [R, W, D]
      bias = self.decoder.block_bias(block_start, width, self.cache_length, self.pad)
      y, cache = self.decoder.run_block(j, x, block_start, cache, self.memory, bias)  # [R, W, D]
      if deferred_only:
        real = block_start + jnp.arange(width) < position  # [W]
        y = jnp.where(real[None, :, None], y.astype(x.dtype), x)
      frontier = jax.lax.dynamic_update_slice_in_dim(
        frontier, y.astype(frontier.dtype), block_start, axis=1
      )
      return block_start + width, frontier, cache

    return body

  def _backfill(
    self, j: int, frontier: Array, cache: KVCache, start: Array, position: Array
  ) -> tuple[Array, KVCache]:
    """deed: layer j over its deferred positions [start, position), start < position: whole calls of
    `chunk` positions, then the remaining r < chunk as one call of the smallest width in
    `self.widths` that holds them (a padded call costs far less than r one-position calls). Padding
    runs past the deferred positions into the current one and the cache's slack: the causal mask
    keeps padded positions out of every real query's view, their K/V are overwritten when their turn
    comes (the current position's by the width-1 call, with the same values), and the frontier there
    is left as it was."""
    remaining = lambda c: position - c[0]  # deferred positions left
    carry = (start, frontier, cache)
    if self.mode.defers and self.prompt_top < j and self.first_slot > 1:
      # A deferred prompt (fill 0 < first_slot, never partly computed): one block of its slots.
      carry = run_once(start < self.first_slot, self._block(j, self.first_slot, position), carry)
    carry = jax.lax.while_loop(
      lambda c: remaining(c) >= self.chunk, self._block(j, self.chunk, position), carry
    )
    smaller = 0
    for width in self.widths:  # At most one of these runs, once.
      fits = lambda c, smaller=smaller, width=width: (
        (remaining(c) > smaller) & (remaining(c) <= width)
      )
      carry = jax.lax.while_loop(fits, self._block(j, width, position, deferred_only=True), carry)
      smaller = width
    return carry[1], carry[2]

  # -----------------------------------------------------------------------------------------------
  # Exits: confidence, and the token of each row's first confident exit.
  # -----------------------------------------------------------------------------------------------
  def _log_probs(self, features: Array, history: processors.History | None) -> Array:
    """The shared head on exit features [R, D] -> log-probabilities [R, V] float32, constrained
    (`processors`) when the config asks."""
    log_probs = jax.nn.log_softmax(self.model.logits(features).astype(jnp.float32))
    if not self.constrained:
      return log_probs
    return processors.process(log_probs, history, self.config, self.prompt.length)

  def _confidence(
    self, j: int, hidden: Array, previous: Array, features: Array, log_probs: Array | None
  ) -> Array:
    """Exit j's confidence (`config.confidence`) from layer j's output `hidden` and input
    `previous` [..., D], the exit `features` [..., D] and, for head confidences, the exit's
    (processed) `log_probs` [..., V] -> [...]."""
    if self.head_at_exits:
      # Constrained scores are renormalised over the tokens still allowed.
      allowed = jax.nn.log_softmax(log_probs) if self.constrained else log_probs
      return confidence_from_log_probs(allowed, self.config.confidence)
    if self.config.confidence == "state":
      return state_confidence(hidden, previous)
    return self.decoder.exit_probability(features, j)  # the learned exit classifier

  def _exit(
    self,
    j: int,
    hidden: Array,
    previous: Array,
    choice: ExitChoice,
    history: processors.History | None,
  ) -> ExitChoice:
    """Exit j for rows still undecided: the confident ones (all, at the last layer) take it.
    hidden [R, D] is layer j's output at the current position, previous [R, D] its input there."""
    layer_features = self.decoder.exit(j, hidden)  # [R, D]
    log_probs = self._log_probs(layer_features, history) if self.head_at_exits else None  # [R, V]
    layer_conf = self._confidence(j, hidden, previous, layer_features, log_probs)  # [R]
    if j == self.last_layer:
      confident = jnp.ones((self.rows,), bool)
    else:
      confident = layer_conf >= self.threshold
    take = ~choice.decided & confident  # [R]
    pick = lambda new, old: jnp.where(take.reshape(take.shape + (1,) * (old.ndim - 1)), new, old)
    if log_probs is not None:
      choice = choice._replace(
        token=pick(jnp.argmax(log_probs, axis=-1).astype(jnp.int32), choice.token),
        log_prob=pick(log_probs.max(axis=-1), choice.log_prob),
        log_probs=None if choice.log_probs is None else pick(log_probs, choice.log_probs),
      )
    return choice._replace(
      decided=choice.decided | take,
      features=pick(layer_features, choice.features),
      exit_layer=pick(jnp.int32(j + 1), choice.exit_layer),
      confidence=pick(layer_conf, choice.confidence),
      hidden=pick(hidden, choice.hidden),
    )

  def _head_after_stack(self, choice: ExitChoice, history: processors.History | None) -> ExitChoice:
    """Head-free confidences (state, classifier): the head runs once, on each row's exit features."""
    log_probs = self._log_probs(choice.features, history)  # [R, V]
    emitted = choice.exit_layer > 0  # [R] rows that were not live get zeros
    return choice._replace(
      token=jnp.where(emitted, jnp.argmax(log_probs, axis=-1), 0).astype(jnp.int32),
      log_prob=jnp.where(emitted, log_probs.max(axis=-1), 0.0),
      log_probs=log_probs if self.keep_log_probs else None,
    )
