"""Naive reference decoding: re-run the whole decoder over the whole prefix at every step.

Slow on purpose and obviously right: no KV cache, no skipped layers; every exit's logits are computed
at every step and a rule picks the exit each row takes its token from. It is what the per-exit
evaluation decodes with, and the independent reference the DEED decoder is tested against (DEED's
tokens must equal "the first confident layer" of this full recomputation).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding.config import DecodeConfig, check_threshold
from deed_jax.decoding.confidence import confidence
from deed_jax.models import MultiExitEncoderDecoder

# logits of every exit [L, B, V] -> (exit taken, 0-based [B]; its confidence [B])
ExitRule = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class ReferenceOutput(NamedTuple):
  tokens: jax.Array  # [B, N] int32, pad after EOS
  exit_layers: jax.Array  # [B, N] int32, 1-based exit each token came from; 0 after EOS
  confidences: jax.Array  # [B, N] float32, the confidence at that exit; 0 after EOS


def first_confident_exit(threshold: jax.Array | float, kind: str, min_exit_layer: int = 1) -> ExitRule:
  """DEED's rule: the first layer >= min_exit_layer whose confidence is >= threshold, else the last."""

  def rule(logits):  # [L, B, V]
    conf = confidence(logits, kind)  # [L, B]
    layers = jnp.arange(logits.shape[0])[:, None]  # [L, 1]
    confident = (conf >= threshold) & (layers >= min_exit_layer - 1)
    confident = confident | (layers == logits.shape[0] - 1)
    chosen = jnp.argmax(confident, axis=0)  # [B] first True
    return chosen, jnp.take_along_axis(conf, chosen[None], axis=0)[0]

  return rule


def fixed_exit(exit_layer: jax.Array | int, kind: str = "max_prob") -> ExitRule:
  """Always exit `exit_layer` (1-based; may be traced)."""

  def rule(logits):  # [L, B, V]
    chosen = jnp.full((logits.shape[1],), exit_layer - 1, jnp.int32)
    return chosen, jnp.take_along_axis(confidence(logits, kind), chosen[None], axis=0)[0]

  return rule


def greedy_with_rule(model: MultiExitEncoderDecoder, encoder_out: jax.Array, encoder_mask: jax.Array,
                     rule: ExitRule, max_new_tokens: int, *, bos_id: int, eos_id: int,
                     pad_id: int) -> ReferenceOutput:
  """The naive loop, from encoder states [B, S, D] and mask [B, S] computed once by the caller."""
  cfg = model.config
  if not 1 <= max_new_tokens <= cfg.max_target_length:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, max_target_length="
                     f"{cfg.max_target_length}].")
  batch, n = encoder_out.shape[0], max_new_tokens
  prefix = jnp.full((batch, n), pad_id, jnp.int32).at[:, 0].set(bos_id)  # [B, N] decoder input
  out = ReferenceOutput(jnp.full((batch, n), pad_id, jnp.int32), jnp.zeros((batch, n), jnp.int32),
                        jnp.zeros((batch, n), jnp.float32))
  done = jnp.zeros((batch,), bool)  # [B]

  def step(t, carry):
    prefix, out, done = carry
    features = model.decoder(prefix, encoder_out, encoder_mask, model.token_embedding[...])  # [L,B,N,D]
    logits = model.logits(jax.lax.dynamic_index_in_dim(features, t, axis=2, keepdims=False))  # [L,B,V]
    chosen, conf = rule(logits)  # [B], [B]
    token = jnp.take_along_axis(jnp.argmax(logits, axis=-1), chosen[None], axis=0)[0]  # [B]
    token = jnp.where(done, pad_id, token).astype(jnp.int32)
    out = ReferenceOutput(out.tokens.at[:, t].set(token),
                          out.exit_layers.at[:, t].set(jnp.where(done, 0, chosen + 1)),
                          out.confidences.at[:, t].set(jnp.where(done, 0.0, conf)))
    next_index = jnp.minimum(t + 1, n - 1)  # The last step's token is not fed back.
    prefix = jnp.where(t + 1 < n, prefix.at[:, next_index].set(token), prefix)
    return prefix, out, done | (token == eos_id)

  _, out, _ = jax.lax.fori_loop(0, n, step, (prefix, out, done))
  return out


def greedy_at_exit(model: MultiExitEncoderDecoder, encoder_inputs: dict, exit_layer: jax.Array | int,
                   max_new_tokens: int) -> jax.Array:
  """Greedy tokens [B, max_new_tokens] from exit `exit_layer` (1-based; may be traced); pad after EOS."""
  model.check_inputs(encoder_inputs)
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  cfg = model.config
  return greedy_with_rule(model, encoder_out, encoder_mask, fixed_exit(exit_layer), max_new_tokens,
                          bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id).tokens


def greedy_reference(model: MultiExitEncoderDecoder, encoder_inputs: dict, config: DecodeConfig,
                     threshold: jax.Array | float | None = None) -> ReferenceOutput:
  """What greedy decoding with `config.exit_mode` in {deed, oracle, static, fixed} must produce.

  `threshold` (default `config.threshold`) may be traced. deed and oracle share the rule: the
  first confident layer of the full model's features.
  """
  if config.strategy != "greedy" or config.exit_mode == "copy":
    raise ValueError(f"The naive reference covers greedy deed/oracle/static/fixed decoding, not "
                     f"strategy={config.strategy!r} exit_mode={config.exit_mode!r}.")
  config = config.resolve(model.config)
  if threshold is None:
    threshold = config.threshold
  if not isinstance(threshold, jax.core.Tracer):
    check_threshold(float(threshold))
  model.check_inputs(encoder_inputs)
  encoder_out, encoder_mask = model.encode(encoder_inputs)
  if config.exit_mode == "static":
    rule = fixed_exit(model.config.decoder_layers, config.confidence)
  elif config.exit_mode == "fixed":
    rule = fixed_exit(config.fixed_exit_layer, config.confidence)
  else:
    rule = first_confident_exit(threshold, config.confidence, config.min_exit_layer)
  return greedy_with_rule(model, encoder_out, encoder_mask, rule, config.max_new_tokens,
                          bos_id=config.bos_id, eos_id=config.eos_id, pad_id=config.pad_id)
