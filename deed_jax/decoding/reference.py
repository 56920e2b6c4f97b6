"""Naive reference decoding: re-run the whole decoder over the whole prefix at every step.

Slow on purpose and obviously right: no KV cache, no skipped layers; every exit's logits are computed
at every step and a rule picks the exit each row takes its token from. It is what the per-exit
evaluation decodes with, and the independent reference the DEED decoder is tested against (DEED's
tokens must equal "the first confident layer" of this full recomputation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deed_jax.decoding import processors
from deed_jax.decoding.confidence import ExitSignals, exit_confidences, exit_signals
from deed_jax.decoding.config import DecodeConfig, check_threshold
from deed_jax.models import MultiExitEncoderDecoder

# every exit's signals at one position (logits [L, B, V], ...) -> (exit taken, 0-based [B]; its
# confidence [B])
ExitRule = Callable[[ExitSignals], tuple[jax.Array, jax.Array]]


class ReferenceOutput(NamedTuple):
  tokens: jax.Array  # [B, N] int32, pad after EOS
  exit_layers: jax.Array  # [B, N] int32, 1-based exit each token came from; 0 after EOS
  confidences: jax.Array  # [B, N] float32, the confidence at that exit; 0 after EOS


def first_confident_exit(
  threshold: jax.Array | float, kind: str, early_exits: tuple[bool, ...] | None = None
) -> ExitRule:
  """DEED's rule: the first layer allowed to exit early (`early_exits[j]`, default all) whose
  confidence is >= threshold, else the last."""

  def rule(signals):
    conf = exit_confidences(kind, signals)  # [L, B]
    num_layers = conf.shape[0]
    allowed = jnp.array(early_exits if early_exits is not None else (True,) * num_layers)[:, None]
    last = (jnp.arange(num_layers) == num_layers - 1)[:, None]  # [L, 1]
    chosen = jnp.argmax((conf >= threshold) & allowed | last, axis=0)  # [B] first True
    return chosen, jnp.take_along_axis(conf, chosen[None], axis=0)[0]

  return rule


def fixed_exit(exit_layer: jax.Array | int, kind: str = "max_prob") -> ExitRule:
  """Always exit `exit_layer` (1-based; may be traced)."""

  def rule(signals):
    conf = exit_confidences(kind, signals)  # [L, B]
    chosen = jnp.full(conf.shape[1:], exit_layer - 1, jnp.int32)
    return chosen, jnp.take_along_axis(conf, chosen[None], axis=0)[0]

  return rule


def _at(x: jax.Array, t: jax.Array) -> jax.Array:
  """x [L, B, T, D] at each row's position t [B] -> [L, B, D]."""
  return jnp.take_along_axis(x, t[None, :, None, None], axis=2)[:, :, 0]


def _full_pass_at(
  model: MultiExitEncoderDecoder,
  prefix: jax.Array,
  t: jax.Array,
  encoder_out: jax.Array,
  encoder_mask: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Every exit's features [L, B, D] and every layer's state [L + 1, B, D] at each row's position
  t [B], from a full teacher-forced pass over the decoder input `prefix` [B, T]."""
  features, states = model.decoder(prefix, encoder_out, encoder_mask, return_states=True)
  return _at(features, t), _at(states, t)


def _prompt_layout(
  prompt, batch: int, bos_id: int, pad_id: int, max_new_tokens: int, max_target_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Prompts written plainly, each from position 0 (no padding before them, nothing shared with
  the fast decoder's left-padded layout): -> (decoder input [B, P + N - 1] with each row's prompt
  at its start and pad after it, prompt lengths [B])."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
  rows = [[bos_id]] * batch if prompt is None else [list(map(int, row)) for row in prompt]
  lengths = np.array([len(row) for row in rows], np.int32)
  prefix = np.full((batch, lengths.max() + max_new_tokens - 1), pad_id, np.int32)
  for b, row in enumerate(rows):
    prefix[b, : len(row)] = row
  if prefix.shape[1] > max_target_length:
    raise ValueError(
      f"max_new_tokens={max_new_tokens} with prompts of up to {lengths.max()} tokens needs "
      f"{prefix.shape[1]} positions; the model has max_target_length={max_target_length}."
    )
  return prefix, lengths


def _left_padded(prefix: np.ndarray, lengths: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """The prompts of `_prompt_layout` left-padded: ([B, P] tokens, [B] padding)."""
  width = int(lengths.max())
  rows = [np.roll(row, width - n) for row, n in zip(prefix[:, :width], lengths)]
  return jnp.asarray(np.stack(rows)), jnp.asarray(width - lengths)


def _constrained(signals, history, constraints: DecodeConfig, width: int):
  """Every exit's signals with its logits replaced by its constrained log-probs [L, B, V]."""
  log_probs = jax.nn.log_softmax(signals.logits.astype(jnp.float32), axis=-1)
  return signals._replace(logits=processors.process(log_probs, history, constraints, width))


def greedy_with_rule(
  model: MultiExitEncoderDecoder,
  encoder_out: jax.Array,
  encoder_mask: jax.Array,
  rule: ExitRule,
  max_new_tokens: int,
  *,
  bos_id: int,
  eos_id: int,
  pad_id: int,
  copy_states: bool = False,
  prompt=None,
  prompt_layout: tuple[jax.Array, jax.Array] | None = None,
  constraints: DecodeConfig | None = None,
) -> ReferenceOutput:
  """The naive loop, from encoder states [B, S, D] and mask [B, S] computed once by the caller.
  `prompt`: each row's decoder prefix (token-id lists, start token first; None: it alone); row b's
  new token i is read at position P_b - 1 + i. `prompt_layout` (instead; may be traced): decoder
  inputs [B, T] with each row's prompt first (what follows is overwritten before it is read) and
  the lengths [B]; a row stops, padded, past position T - 1. `copy_states` (CALM): a generated
  position's layers above its exit see K/V projected from its exit state. `constraints` (a resolved
  DecodeConfig): HF's constraints on every exit's log-probs, the confidence read renormalised."""
  cfg = model.config
  batch, n = encoder_out.shape[0], max_new_tokens
  if prompt_layout is None:
    prefix, lengths = _prompt_layout(prompt, batch, bos_id, pad_id, n, cfg.max_target_length)
  else:
    prefix, lengths = prompt_layout
  total, zeros = prefix.shape[1], jnp.zeros((batch, n))
  out = ReferenceOutput(jnp.full((batch, n), pad_id, jnp.int32), zeros.astype(jnp.int32), zeros)
  done, rows, encoded = jnp.zeros((batch,), bool), jnp.arange(batch), (encoder_out, encoder_mask)
  # copy only: each position's exit layer [B, T] (a prompt's: the last) and exit state [B, T, D]
  depths = jnp.full((batch, total), cfg.decoder_layers, jnp.int32)
  exit_states = jnp.zeros((batch, total, cfg.d_model), jnp.dtype(cfg.dtype))
  if constraints is not None:  # what the constraints read a row's sequence from (concrete prompts)
    left, pad = _left_padded(prefix, lengths)

  def step(i, carry):
    prefix, out, done, depths, exit_states = carry
    t = jnp.asarray(lengths) - 1 + i  # [B] each row's position
    done, t = done | (t > total - 1), jnp.minimum(t, total - 1)  # out of room: a traced layout
    if copy_states:  # [L + 1, B, D], [L, B, D]
      states, features = copied_state_pass(model, prefix, t, depths, exit_states, *encoded)
    else:  # [L, B, D], [L + 1, B, D]
      features, states = _full_pass_at(model, prefix, t, *encoded)
    signals = exit_signals(model, features, states)  # logits [L, B, V], ...
    if constraints is not None:  # the constrained log-probs stand in for the logits
      history = processors.History(jnp.concatenate([left, out.tokens], 1), pad, i)
      signals = _constrained(signals, history, constraints, left.shape[1])
    chosen, token, exit_layer, out = _emit(rule, signals, out, i, done, pad_id)
    if copy_states:  # the exit layer's output at t: what later positions' upper layers see
      state = jnp.take_along_axis(states[1:], chosen[None, :, None], axis=0)[0]  # [B, D]
      exit_states = exit_states.at[rows, t].set(state.astype(exit_states.dtype))
      depths = depths.at[rows, t].set(exit_layer)
    fed = prefix.at[rows, jnp.minimum(t + 1, total - 1)].set(token)
    prefix = jnp.where(i + 1 < n, fed, prefix)  # the last step's token is not fed back
    return prefix, out, done | (token == eos_id), depths, exit_states

  return jax.lax.fori_loop(0, n, step, (jnp.asarray(prefix), out, done, depths, exit_states))[1]


def _emit(rule: ExitRule, signals, out: ReferenceOutput, i, done: jax.Array, pad_id: int):
  """Step i's exit (0-based [B]), token [B] and exit layer [B] (1-based; pad and 0 for rows already
  done), and `out` with them written at i."""
  chosen, conf = rule(signals)  # [B], [B]
  token = jnp.take_along_axis(jnp.argmax(signals.logits, axis=-1), chosen[None], axis=0)[0]
  token = jnp.where(done, pad_id, token).astype(jnp.int32)
  exit_layer = jnp.where(done, 0, chosen + 1)
  out = ReferenceOutput(
    out.tokens.at[:, i].set(token),
    out.exit_layers.at[:, i].set(exit_layer),
    out.confidences.at[:, i].set(jnp.where(done, 0.0, conf)),
  )
  return chosen, token, exit_layer, out


def copied_state_pass(
  model: MultiExitEncoderDecoder,
  prefix: jax.Array,
  t: jax.Array,
  exit_layers: jax.Array,
  exit_states: jax.Array,
  encoder_out: jax.Array,
  encoder_mask: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """The whole decoder over the prefix [B, T], where each position before t (each row's, [] or [B])
  takes, at its layers above its exit (exit_layers [B, T], 1-based), K/V from its exit state
  [B, T, D] (its exit layer's output).

  -> the layer states at t [L + 1, B, D] (the embedding first) and the exit features at t [L, B, D].
  """
  positions = jnp.arange(prefix.shape[1])
  t = jnp.broadcast_to(t, prefix.shape[:1])  # [B]

  def kv_input_fn(j, x):  # x [B, T, D]
    own_state = (positions[None, :] >= t[:, None]) | (exit_layers >= j + 1)  # [B, T]
    return jnp.where(own_state[..., None], x, exit_states.astype(x.dtype))

  features, states = model.decoder(
    prefix, encoder_out, encoder_mask, kv_input_fn=kv_input_fn, return_states=True
  )
  return _at(states, t), _at(features, t)


def greedy_at_exit(
  model: MultiExitEncoderDecoder,
  encoder_inputs: dict,
  exit_layer: jax.Array | int,
  max_new_tokens: int,
) -> jax.Array:
  """Greedy tokens [B, max_new_tokens] from exit `exit_layer` (1-based; may be traced); pad after EOS."""
  model.check_inputs(encoder_inputs)
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  return greedy_encoded_at_exit(model, encoder_out, encoder_mask, exit_layer, max_new_tokens)


def greedy_encoded_at_exit(
  model: MultiExitEncoderDecoder,
  encoder_out: jax.Array,
  encoder_mask: jax.Array,
  exit_layer: jax.Array | int,
  max_new_tokens: int,
  prompt_layout: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """`greedy_at_exit` from encoder states [B, S, D] and mask [B, S] the caller computed once;
  `prompt_layout` as `greedy_with_rule`'s."""
  cfg = model.config
  return greedy_with_rule(
    model,
    encoder_out,
    encoder_mask,
    fixed_exit(exit_layer),
    max_new_tokens,
    bos_id=cfg.bos_id,
    eos_id=cfg.eos_id,
    pad_id=cfg.pad_id,
    prompt_layout=prompt_layout,
  ).tokens


def greedy_reference(
  model: MultiExitEncoderDecoder,
  encoder_inputs: dict,
  config: DecodeConfig,
  threshold: jax.Array | float | None = None,
  prompt=None,
) -> ReferenceOutput:
  """What greedy decoding with `config.exit_mode` must produce, after each row's `prompt` (token-id
  lists; None: the start token alone).

  `threshold` (default `config.threshold`) may be traced. deed, oracle and copy share the rule: the
  first confident layer (of the full model's features; for copy, of the copied-state model's).
  """
  if config.strategy != "greedy":
    raise ValueError(f"The naive reference decodes greedily, not strategy={config.strategy!r}.")
  config = config.resolve(model.config)
  if threshold is None:
    threshold = config.threshold
  if not isinstance(threshold, jax.core.Tracer):
    check_threshold(threshold)
  model.check_inputs(encoder_inputs)
  encoder_out, encoder_mask = model.encode(encoder_inputs)
  if config.exit_mode == "static":
    rule = fixed_exit(model.config.decoder_layers, config.confidence)
  elif config.exit_mode == "fixed":
    rule = fixed_exit(config.fixed_exit_layer, config.confidence)
  else:
    rule = first_confident_exit(
      threshold, config.confidence, early_exits=config.early_exits(model.config.decoder_layers)
    )
  return greedy_with_rule(
    model,
    encoder_out,
    encoder_mask,
    rule,
    config.max_new_tokens,
    bos_id=config.bos_id,
    eos_id=config.eos_id,
    pad_id=config.pad_id,
    copy_states=config.exit_mode == "copy",
    prompt=prompt,
    constraints=config if processors.active(config) else None,
  )
