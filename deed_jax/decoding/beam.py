"""Beam search with step-level early exit, with Hugging Face's beam semantics.

Every beam is one decoder row (R = B x K) and scores its candidates with the log-probs of its own exit
layer; the layer loop runs while any beam of an unfinished row is not confident (`DecodeStep`). Each
step (as Hugging Face transformers 4.57 `generate`): the top 2K of the K x V continuations; an EOS among
the top K of them enters the row's pool of finished hypotheses with score
sum_logprobs / generated_len ** length_penalty; the best K others become the next beams, which reorder
the KV caches and the frontier buffer. A row is done when its pool holds K hypotheses and either
`early_stopping` or no live beam can still beat the worst of them (HF's heuristic, as in transformers
4.57: the best running beam's score at the current length). Rows still running at `max_new_tokens`
add their live beams to the pool.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import DecoderState, DecodeStep, ExitChoice, StepWork
from deed_jax.decoding.output import DecodeOutput, Hypotheses
from deed_jax.decoding.processors import History
from deed_jax.decoding.prompts import Prompt
from deed_jax.models import MultiExitEncoderDecoder

Array = jax.Array
_UNREACHABLE = -1.0e9  # HF's initial score of beams 2..K, so the first step expands beam 1 only.


class _Beams(NamedTuple):
  position: Array  # [] int32: new tokens so far (the cache slot is the prompt's last + this)
  last_token: Array  # [B * K] int32
  done: Array  # [B] bool
  decoder: DecoderState  # rows b * K + k
  live: Hypotheses  # scores: sum of log-probs so far
  finished: Hypotheses  # scores: length-normalised; -inf where `valid` is False
  valid: Array  # [B, K] bool, pool slots that hold a hypothesis
  layers_run: Array  # [N] int32
  backfilled: Array  # [L] int32


def _normalise(sum_log_probs: Array, length: Array, config: DecodeConfig) -> Array:
  return sum_log_probs / length.astype(jnp.float32) ** config.length_penalty


def _add_to_pool(
  finished: Hypotheses, valid: Array, new: Hypotheses, new_valid: Array
) -> tuple[Hypotheses, Array]:
  """Keep the K best of the pool and the new hypotheses (existing ones win ties, as in HF)."""
  k = finished.scores.shape[1]
  merged = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), finished, new)
  merged_valid = jnp.concatenate([valid, new_valid], axis=1)  # [B, K + M]
  scores = jnp.where(merged_valid, merged.scores, -jnp.inf)
  _, keep = jax.lax.top_k(scores, k)  # [B, K], best first
  take = lambda x: jnp.take_along_axis(x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)), axis=1)
  return jax.tree.map(take, merged), take(merged_valid)


def beam_decode(
  model: MultiExitEncoderDecoder,
  encoder_inputs: dict,
  config: DecodeConfig,
  threshold: Array | float,
  prompt: Prompt,
) -> DecodeOutput:
  """Pure function of the model's arrays (call it under jit). `config` must be `resolve`d; `prompt`
  is every row's (`prompts.make_prompt`), shared by its beams."""
  n, k = config.max_new_tokens, config.num_beams
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  batch = encoder_out.shape[0]
  repeat = lambda x: jnp.repeat(x, k, axis=0)  # [B, ...] -> [B * K, ...], beams of a row adjacent
  beam_prompt = Prompt(*(repeat(jnp.asarray(x, jnp.int32)) for x in prompt))
  decode_step = DecodeStep(
    model,
    repeat(encoder_out),
    repeat(encoder_mask),
    config,
    threshold,
    beam_prompt,
    log_probs=True,
  )
  first = decode_step.first_slot

  def step(beams: _Beams) -> _Beams:
    slot = first + beams.position
    new_tokens = beams.live.tokens.reshape(batch * k, n)  # rows b * K + k, as the decoder's
    history = History(
      jnp.concatenate([beam_prompt.tokens, new_tokens], 1), beam_prompt.pad, beams.position
    )
    live = repeat(~beams.done)
    decoder, emitted, work = decode_step(beams.decoder, slot, beams.last_token, live, history)
    return _advance(beams, decoder, emitted, work, config)

  init = _initial_beams(config, decode_step.init_state(), beam_prompt, model.config.decoder_layers)
  final = jax.lax.while_loop(lambda s: (s.position < n) & jnp.any(~s.done), step, init)

  # Rows that reached max_new_tokens offer their live beams too.
  live = final.live._replace(scores=_normalise(final.live.scores, final.position, config))
  pool, _ = _add_to_pool(
    final.finished, final.valid, live, jnp.broadcast_to(~final.done[:, None], (batch, k))
  )
  best = jax.tree.map(lambda x: x[:, 0], pool)
  return DecodeOutput(
    best.tokens,
    best.scores,
    best.exit_layers,
    best.confidences,
    final.layers_run,
    final.backfilled,
    beams=pool,
  )


def _initial_beams(
  config: DecodeConfig, decoder: DecoderState, prompt: Prompt, num_layers: int
) -> _Beams:
  """Every row starts from its prompt with K beams, of which only the first can be expanded."""
  n, k = config.max_new_tokens, config.num_beams
  batch = prompt.tokens.shape[0] // k
  empty = lambda fill, dtype: jnp.full((batch, k, n), fill, dtype)
  live_scores = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(_UNREACHABLE)
  return _Beams(
    position=jnp.int32(0),
    last_token=prompt.tokens[:, -1].astype(jnp.int32),  # [B * K] each row's last prompt token
    done=jnp.zeros((batch,), bool),
    decoder=decoder,
    live=Hypotheses(
      empty(config.pad_id, jnp.int32), live_scores, empty(0, jnp.int32), empty(0.0, jnp.float32)
    ),
    finished=Hypotheses(
      empty(config.pad_id, jnp.int32),
      jnp.full((batch, k), -jnp.inf),
      empty(0, jnp.int32),
      empty(0.0, jnp.float32),
    ),
    valid=jnp.zeros((batch, k), bool),
    layers_run=jnp.zeros((n,), jnp.int32),
    backfilled=jnp.zeros((num_layers,), jnp.int32),
  )


def _advance(
  beams: _Beams, decoder: DecoderState, emitted: ExitChoice, work: StepWork, config: DecodeConfig
) -> _Beams:
  """One beam-search step from each beam's exit log-probs (`emitted`, rows b * K + k): new beams,
  finished hypotheses into the pool, rows that are done, and the decoder rows reordered."""
  p, k = beams.position, config.num_beams
  batch = beams.done.shape[0]
  vocab = emitted.log_probs.shape[-1]
  candidates = beams.live.scores[:, :, None] + emitted.log_probs.reshape(batch, k, vocab)  # [B,K,V]
  cand_scores, flat = jax.lax.top_k(candidates.reshape(batch, k * vocab), 2 * k)  # [B, 2K]
  cand_beam, cand_token = flat // vocab, (flat % vocab).astype(jnp.int32)

  def extend(parent: Array, token: Array, scores: Array) -> Hypotheses:
    """Hypotheses that continue beam `parent` [B, M] with `token` [B, M] at position p."""
    take = lambda x: jnp.take_along_axis(x, parent[:, :, None], axis=1)
    exit_layers = emitted.exit_layer.reshape(batch, k)
    confidences = emitted.confidence.reshape(batch, k)
    return Hypotheses(
      take(beams.live.tokens).at[:, :, p].set(token),
      scores,
      take(beams.live.exit_layers).at[:, :, p].set(jnp.take_along_axis(exit_layers, parent, 1)),
      take(beams.live.confidences).at[:, :, p].set(jnp.take_along_axis(confidences, parent, 1)),
    )

  is_eos = cand_token == config.eos_id
  rank = jnp.arange(2 * k)[None, :]
  ended = extend(cand_beam, cand_token, _normalise(cand_scores, p + 1, config))
  finished, valid = _add_to_pool(
    beams.finished, beams.valid, ended, is_eos & (rank < k) & ~beams.done[:, None]
  )
  # The best K candidates that do not end; at most K of the 2K end, so K always remain.
  _, chosen = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, cand_scores), k)  # [B, K]
  pick = lambda x: jnp.take_along_axis(x, chosen, axis=1)
  parent, token = pick(cand_beam), pick(cand_token)
  live = extend(parent, token, pick(cand_scores))

  # [B] the best running beam (HF 4.57)
  best_possible = _normalise(live.scores[:, 0], p + 1, config)
  worst_finished = jnp.min(jnp.where(valid, finished.scores, jnp.inf), axis=1)
  full = jnp.all(valid, axis=1)
  stop = full if config.early_stopping else full & (worst_finished >= best_possible)
  # Rows already done keep their beams and pool untouched.
  keep = lambda old, new: jnp.where(beams.done.reshape((batch,) + (1,) * (old.ndim - 1)), old, new)
  live = jax.tree.map(keep, beams.live, live)
  finished, valid = jax.tree.map(keep, beams.finished, finished), keep(beams.valid, valid)
  parent = keep(jnp.broadcast_to(jnp.arange(k), (batch, k)), parent)
  row_base = (jnp.arange(batch) * k)[:, None]  # [B, 1]
  decoder = decoder.take_rows((row_base + parent).reshape(batch * k))
  return _Beams(
    p + 1,
    live.tokens[:, :, p].reshape(batch * k),
    beams.done | stop,
    decoder,
    live,
    finished,
    valid,
    beams.layers_run.at[p].set(work.layers_run),
    beams.backfilled + work.backfilled,
  )
