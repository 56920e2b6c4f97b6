"""Greedy decoding with step-level early exit: one `lax.while_loop` over tokens around `DecodeStep`.

Each row's token is the argmax of its own exit; a row's tokens equal those of decoding it alone.
Decoding starts after the prompt (`prompts`): the loop runs over cache slots P - 1, P, ..., and new
token i sits at slot P - 1 + i, in every row.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import DecoderState, DecodeStep
from deed_jax.decoding.output import DecodeOutput
from deed_jax.decoding.processors import History
from deed_jax.decoding.prompts import Prompt
from deed_jax.models import MultiExitEncoderDecoder

Array = jax.Array


class _Loop(NamedTuple):
  position: Array  # [] int32, the cache slot being decoded
  last_token: Array  # [B] int32, input at `position`
  done: Array  # [B] bool
  decoder: DecoderState
  out: DecodeOutput


def greedy_decode(
  model: MultiExitEncoderDecoder,
  encoder_inputs: dict,
  config: DecodeConfig,
  threshold: Array | float,
  prompt: Prompt,
) -> DecodeOutput:
  """Pure function of the model's arrays (call it under jit). `config` must be `resolve`d; `prompt`
  is every row's (`prompts.make_prompt`)."""
  n = config.max_new_tokens
  encoder_out, encoder_mask = model.encode(encoder_inputs)  # [B, S, D], [B, S]
  batch = encoder_out.shape[0]
  decode_step = DecodeStep(model, encoder_out, encoder_mask, config, threshold, prompt)
  first = decode_step.first_slot
  prompt_tokens, prompt_pad = jnp.asarray(prompt.tokens, jnp.int32), jnp.asarray(prompt.pad)

  def step(loop: _Loop) -> _Loop:
    p, live = loop.position, ~loop.done
    i = p - first  # the new token's index
    history = History(jnp.concatenate([prompt_tokens, loop.out.tokens], 1), prompt_pad, i)
    decoder, emitted, work = decode_step(loop.decoder, p, loop.last_token, live, history)
    token = jnp.where(live, emitted.token, config.pad_id)
    out = loop.out
    out = out._replace(
      tokens=out.tokens.at[:, i].set(token),
      scores=out.scores + jnp.where(live, emitted.log_prob, 0.0),
      exit_layers=out.exit_layers.at[:, i].set(emitted.exit_layer),
      confidences=out.confidences.at[:, i].set(emitted.confidence),
      layers_run=out.layers_run.at[i].set(work.layers_run),
      backfilled=out.backfilled + work.backfilled,
    )
    return _Loop(p + 1, token, loop.done | (token == config.eos_id), decoder, out)

  init = _Loop(
    position=jnp.int32(first),
    last_token=jnp.asarray(prompt.tokens[:, -1], jnp.int32),  # each row's last prompt token
    done=jnp.zeros((batch,), bool),
    decoder=decode_step.init_state(),
    out=DecodeOutput(
      jnp.full((batch, n), config.pad_id, jnp.int32),
      jnp.zeros((batch,), jnp.float32),
      jnp.zeros((batch, n), jnp.int32),
      jnp.zeros((batch, n), jnp.float32),
      jnp.zeros((n,), jnp.int32),
      jnp.zeros((model.config.decoder_layers,), jnp.int32),
    ),
  )
  final = jax.lax.while_loop(lambda s: (s.position < first + n) & jnp.any(~s.done), step, init)
  return final.out
