"""Lossless self-speculative greedy decoding on the multi-exit model: draft at a shallow exit, verify
the drafted block with the layers above in one backfill, keep what the full model agrees with.

A round at slot p (input: the last emitted token) drafts up to k = `max_draft` tokens, each through
layers 1..d (`draft_exit_layer`) and the shared head, as ordinary steps of a `DecodeStep` whose top
layer is d; drafting stops early after a draft whose confidence is below the threshold (0: always k),
once every row has drafted EOS, or where the token budget ends. The layers above d are left deferred
at the drafted slots, exactly as DEED leaves a skipped layer. Verification (`DecodeStep.verify`)
computes every layer's deferred slots up to the end of the block, the last draft's input included:
one block call per layer, DEED's backfill. The last layer's argmax at each slot is the full model's
token there given the drafts before it, so a row accepts the longest run of drafts equal to those
tokens and then takes the full model's token at the first mismatch (or after the last draft): every
round emits at least one token, and every emitted token is the one static greedy decoding emits.

Rows of a batch share one cache slot (`prompts`), so a round emits, in every row, as many tokens as
the row still decoding that accepted the fewest accepted, plus one (rows that end within their
accepted run do not hold the others back). The rows that accepted more give up their extra accepted
drafts: the next round drafts them again, from the same inputs, so they are the same drafts. Per-row
slots would let each row keep its own count, at the price of per-row fill pointers and scattered
cache writes in every layer of every step; at batch 1 the two are the same thing, and
`bench.speculative` measures what the batch minimum costs at larger batches (its rounds against the
most any row needs decoded alone). Rejected slots are not copied or cleared: every layer's fill
pointer moves back to the first slot not emitted (`DecoderState.rewind`), and the next round
overwrites their K/V.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import DecoderState, DecodeStep, Verified
from deed_jax.decoding.output import DecodeOutput, Speculation
from deed_jax.decoding.processors import History
from deed_jax.decoding.prompts import Prompt
from deed_jax.models import MultiExitEncoderDecoder

Array = jax.Array


class _Emitted(NamedTuple):
  """Per row, what has been emitted; the token buffers hold N + W slots (W = max_draft + 1) so that
  a round's W-wide write never runs off the end."""

  tokens: Array  # [B, N + W] int32: emitted tokens, the current round's drafts after them
  exit_layers: Array  # [B, N + W] int32
  confidences: Array  # [B, N + W] float32
  scores: Array  # [B] float32
  layers_run: Array  # [N + W] int32
  backfilled: Array  # [L] int32
  speculation: Speculation


class _Round(NamedTuple):
  position: Array  # [] int32, the slot of the round's first input
  last_token: Array  # [B] int32, the input there
  done: Array  # [B] bool
  decoder: DecoderState
  out: _Emitted


class _Draft(NamedTuple):
  count: Array  # [] int32, drafts so far (m)
  going: Array  # [] bool, whether to draft another
  decoder: DecoderState
  inputs: Array  # [B, W] int32: the round's inputs, the last emitted token then the drafts
  confidences: Array  # [B, W] float32, draft i's at column i
  ended: Array  # [B] bool, the row has drafted EOS
  tokens: Array  # [B, N + W] int32, the emitted tokens with the drafts after them
  layers_run: Array  # [] int32


def speculative_decode(
  model: MultiExitEncoderDecoder,
  encoder_inputs: dict,
  config: DecodeConfig,
  threshold: Array | float,
  prompt: Prompt,
) -> DecodeOutput:
  """Pure function of the model's arrays (call it under jit); `config` must be `resolve`d, with
  exit_mode "speculative". The tokens equal static greedy decoding's."""
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  step = DecodeStep(model, encoder_out, encoder_mask, config, threshold, prompt)
  rounds = _Rounds(step, config, threshold, prompt)
  n, first = config.max_new_tokens, step.first_slot
  final = jax.lax.while_loop(
    lambda r: (r.position < first + n) & jnp.any(~r.done), rounds, rounds.init()
  ).out
  return DecodeOutput(
    tokens=final.tokens[:, :n],
    scores=final.scores,
    exit_layers=final.exit_layers[:, :n],
    confidences=final.confidences[:, :n],
    layers_run=final.layers_run[:n],
    backfilled=final.backfilled,
    speculation=final.speculation,
  )


class _Rounds:
  """One draft-and-verify round (`__call__`, the body of the decoding loop) and the loop's start."""

  def __init__(self, step: DecodeStep, config: DecodeConfig, threshold, prompt: Prompt):
    self.step, self.config, self.threshold = step, config, threshold
    self.n, self.width = config.max_new_tokens, config.max_draft + 1
    self.first = step.first_slot
    self.rows, self.num_layers = step.rows, step.num_layers
    self.prompt = prompt
    self.prompt_tokens = jnp.asarray(prompt.tokens, jnp.int32)

  def init(self) -> _Round:
    rows, slots = self.rows, self.n + self.width
    zeros = jnp.zeros((rows,), jnp.int32)
    return _Round(
      position=jnp.int32(self.first),
      last_token=self.prompt_tokens[:, -1],
      done=jnp.zeros((rows,), bool),
      decoder=self.step.init_state(),
      out=_Emitted(
        tokens=jnp.full((rows, slots), self.config.pad_id, jnp.int32),
        exit_layers=jnp.zeros((rows, slots), jnp.int32),
        confidences=jnp.zeros((rows, slots), jnp.float32),
        scores=jnp.zeros((rows,), jnp.float32),
        layers_run=jnp.zeros((slots,), jnp.int32),
        backfilled=jnp.zeros((self.num_layers,), jnp.int32),
        speculation=Speculation(jnp.int32(0), zeros, zeros),
      ),
    )

  def history(self, tokens: Array, new: Array) -> History:
    """Each row's sequence: its prompt, then `tokens` [B, N + W] (the first `new` of them count)."""
    tokens = jnp.concatenate([self.prompt_tokens, tokens], 1)
    return History(tokens, jnp.asarray(self.prompt.pad), new)

  def draft(self, p: Array, live: Array, budget: Array, d: _Draft) -> _Draft:
    """Draft token `d.count` at slot p + count, through layers 1..draft_exit_layer."""
    i, eos = d.count, self.config.eos_id
    new = p - self.first + i  # the draft's index among the new tokens
    token_in = jax.lax.dynamic_index_in_dim(d.inputs, i, axis=1, keepdims=False)
    decoder, choice, work = self.step(d.decoder, p + i, token_in, live, self.history(d.tokens, new))
    ended = d.ended | (choice.token == eos)
    drafting = live & ~ended  # rows whose next draft matters
    confident = jnp.all((choice.confidence >= self.threshold) | ~drafting)
    write = lambda buffer, values, at: jax.lax.dynamic_update_slice_in_dim(
      buffer, values[:, None], at, 1
    )
    return _Draft(
      count=i + 1,
      going=confident & jnp.any(drafting) & (i + 1 < budget),
      decoder=decoder,
      inputs=write(d.inputs, choice.token, i + 1),
      confidences=write(d.confidences, choice.confidence, i),
      ended=ended,
      tokens=write(d.tokens, choice.token, new),
      layers_run=d.layers_run + work.layers_run,
    )

  def __call__(self, r: _Round) -> _Round:
    p, live, width = r.position, ~r.done, self.width
    # At most max_draft drafts, leaving room for the full model's token within max_new_tokens.
    budget = jnp.minimum(self.config.max_draft, self.first + self.n - p - 1)
    drafted = jax.lax.while_loop(
      lambda d: d.going,
      lambda d: self.draft(p, live, budget, d),
      _Draft(
        count=jnp.int32(0),
        going=budget > 0,
        decoder=r.decoder,
        inputs=jnp.zeros((self.rows, width), jnp.int32).at[:, 0].set(r.last_token),
        confidences=jnp.zeros((self.rows, width), jnp.float32),
        ended=~live,
        tokens=r.out.tokens,
        layers_run=jnp.int32(0),
      ),
    )
    m, start = drafted.count, p - self.first
    last_input = jax.lax.dynamic_index_in_dim(drafted.inputs, m, axis=1, keepdims=False)
    decoder, verified, work = self.step.verify(
      drafted.decoder, p, p + m + 1, last_input, self.history(drafted.tokens, start)
    )
    agree = (drafted.inputs[:, 1:] == verified.token[:, :-1]) & (jnp.arange(width - 1) < m)
    accepted = jnp.sum(jnp.cumprod(agree, axis=1), axis=1)  # [B] the leading drafts agreed with
    length = _round_length(accepted, verified.token, m, live, self.config.eos_id)
    out = _emit(
      r.out, start, length, accepted, drafted, verified, live, self.config, self.num_layers
    )
    out = out._replace(
      layers_run=out.layers_run.at[start].set(drafted.layers_run + work.layers_run),
      backfilled=out.backfilled + work.backfilled,
    )
    emitted = jax.lax.dynamic_slice_in_dim(out.tokens, start, width, axis=1)  # [B, W]
    ended = jnp.any((emitted == self.config.eos_id) & (jnp.arange(width) < length), axis=1)
    return _Round(
      position=p + length,
      last_token=jax.lax.dynamic_index_in_dim(verified.token, length - 1, 1, keepdims=False),
      done=r.done | (live & ended),
      decoder=decoder.rewind(p + length),
      out=out,
    )


def _round_length(accepted: Array, verified: Array, m: Array, live: Array, eos_id: int) -> Array:
  """[] the tokens a round emits in every row: the fewest accepted drafts plus one, among the live
  rows that do not end within their accepted run (the others need no more slots); m + 1 when
  every row ends. accepted [B], verified [B, W] the full model's tokens, m [] drafts."""
  slots = jnp.arange(verified.shape[1])
  ends = jnp.any((verified == eos_id) & (slots[None, :] <= accepted[:, None]), axis=1)  # [B]
  holding_back = jnp.where(live & ~ends, accepted + 1, verified.shape[1])
  return jnp.minimum(jnp.min(holding_back), m + 1)


def _emit(
  out: _Emitted,
  start: Array,
  length: Array,
  accepted: Array,
  drafted: _Draft,
  verified: Verified,
  live: Array,
  config: DecodeConfig,
  num_layers: int,
) -> _Emitted:
  """Write the round's `length` tokens (the full model's; pad after a row's EOS and in rows not
  live) at new-token index `start`, over the drafts, with their exits (the draft exit for an
  accepted draft, the last layer for the full model's own token) and confidences."""
  slots = jnp.arange(verified.token.shape[1])[None, :]  # [1, W]
  is_eos = verified.token == config.eos_id
  after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
  emit = (slots < length) & live[:, None] & ~after_eos  # [B, W]
  from_draft = slots < accepted[:, None]
  exit_layer = jnp.where(from_draft, config.draft_exit_layer, num_layers)
  confidence = jnp.where(from_draft, drafted.confidences, verified.confidence)
  write = lambda buffer, values: jax.lax.dynamic_update_slice_in_dim(buffer, values, start, 1)
  stats = out.speculation
  return out._replace(
    tokens=write(drafted.tokens, jnp.where(emit, verified.token, config.pad_id)),
    exit_layers=write(out.exit_layers, jnp.where(emit, exit_layer, 0).astype(jnp.int32)),
    confidences=write(out.confidences, jnp.where(emit, confidence, 0.0)),
    scores=out.scores + jnp.where(emit, verified.log_prob, 0.0).sum(axis=1),
    speculation=Speculation(
      rounds=stats.rounds + 1,
      drafted=stats.drafted + jnp.where(live, drafted.count, 0),
      matched=stats.matched + jnp.where(live, accepted, 0),
    ),
  )
