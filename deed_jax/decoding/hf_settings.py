"""Hugging Face generation settings as `DecodeConfig` fields, so that a converted model decodes as
`hf_model.generate(inputs)` does with the checkpoint's own settings.

The settings are `generation_config.json`'s values, or, for checkpoints older than that file, the
generation keys of `config.json` (read as transformers' `GenerationConfig.from_model_config` reads
them: the top level, then the decoder's sub-config for keys still at their defaults). No transformers
import: this runs wherever decoding runs.

HF counts `max_length` and `min_length` over the whole decoder sequence, the start token and any
prompt included; `DecodeConfig` counts new tokens. The conversion takes a prompt length: 1 (the start
token alone, how summarisation and translation models are called) by default. A ragged batch of
prompts is, in HF, left-padded to its longest row, so the HF counts of such a batch are those of
its longest prompt. A `max_length` of exactly HF's default, 20, means 20 new tokens whatever the prompt
(transformers 4.57 adds the prompt's length to it), at most up to the model config's
`max_position_embeddings`.
"""

from __future__ import annotations

from typing import Any

from deed_jax.errors import UserError

# transformers' GenerationConfig defaults for the keys read here.
HF_DEFAULTS: dict[str, Any] = dict(
  max_length=20,
  max_new_tokens=None,
  min_length=0,
  min_new_tokens=None,
  num_beams=1,
  length_penalty=1.0,
  early_stopping=False,
  no_repeat_ngram_size=0,
  bad_words_ids=None,
  forced_bos_token_id=None,
  forced_eos_token_id=None,
  decoder_start_token_id=None,
  eos_token_id=None,
  pad_token_id=None,
)
# Settings that change HF's output but that deed-jax does not implement, with the values that leave
# the output unchanged. Any other value is reported (`ignored`) and decoding goes on without it.
NOT_IMPLEMENTED: dict[str, Any] = dict(
  do_sample=False,
  num_beam_groups=1,
  diversity_penalty=0.0,
  penalty_alpha=None,
  repetition_penalty=1.0,
  encoder_repetition_penalty=1.0,
  encoder_no_repeat_ngram_size=0,
  exponential_decay_length_penalty=None,
  suppress_tokens=None,
  begin_suppress_tokens=None,
  sequence_bias=None,
  force_words_ids=None,
  constraints=None,
  renormalize_logits=False,
  guidance_scale=None,
  dola_layers=None,
  stop_strings=None,
)


def legacy_settings(resolved_config: dict) -> dict[str, Any]:
  """The generation settings of a config.json (as transformers resolves it, defaults filled in) whose
  checkpoint has no generation_config.json: its top-level keys, then its decoder's (an
  encoder-decoder's sub-config) for keys the top level leaves at HF's default."""
  defaults = {**NOT_IMPLEMENTED, **HF_DEFAULTS}
  settings = {k: v for k, v in resolved_config.items() if k in defaults and v is not None}
  decoder = resolved_config.get("decoder")
  for key, default in defaults.items() if isinstance(decoder, dict) else ():
    if settings.get(key, default) == default and decoder.get(key) is not None:
      settings[key] = decoder[key]
  return settings


def _single_id(name: str, value, ignored: list[str]) -> int | None:
  """HF allows a list of EOS ids; deed-jax takes one: the first (the others are reported)."""
  if isinstance(value, (list, tuple)):
    if len(set(value)) > 1:
      ignored.append(f"{name}={list(value)} (only {value[0]} is used)")
    value = value[0] if value else None
  return value


def decode_fields(
  settings: dict[str, Any], prompt_length: int = 1, max_positions: int | None = None
) -> tuple[dict, list[str]]:
  """HF generation `settings` -> (DecodeConfig fields, the names of settings deed-jax ignores).
  `prompt_length`: the decoder prompt's length, start token included; `max_positions`: the model
  config's max_position_embeddings, if it has one (see the module docstring)."""
  hf = {**HF_DEFAULTS, **{k: v for k, v in settings.items() if k in HF_DEFAULTS}}
  ignored = sorted(
    k for k, default in NOT_IMPLEMENTED.items() if settings.get(k, default) not in (default, None)
  )
  if hf["early_stopping"] == "never":  # HF's third stopping rule: not implemented
    ignored.append("early_stopping='never' (read as False)")
    hf["early_stopping"] = False
  if hf["max_new_tokens"] is not None:
    max_new = hf["max_new_tokens"]
  else:
    max_length = hf["max_length"]
    if max_length == HF_DEFAULTS["max_length"]:  # HF's default: that many new tokens
      max_length += prompt_length
      max_length = max_length if max_positions is None else min(max_length, max_positions)
    max_new = max_length - prompt_length
    if max_new < 1:
      raise UserError(
        f"generation setting max_length={hf['max_length']} leaves no new token after a prompt of "
        f"{prompt_length}; pass max_new_tokens=."
      )
  fields = dict(
    strategy="beam" if hf["num_beams"] > 1 else "greedy",
    num_beams=hf["num_beams"],
    max_new_tokens=max_new,
    min_new_tokens=max(hf["min_new_tokens"] or 0, hf["min_length"] - prompt_length, 0),
    length_penalty=float(hf["length_penalty"]),
    early_stopping=bool(hf["early_stopping"]),
    no_repeat_ngram_size=hf["no_repeat_ngram_size"],
    bad_words_ids=hf["bad_words_ids"],
    forced_bos_id=hf["forced_bos_token_id"],
    forced_eos_id=_single_id("forced_eos_token_id", hf["forced_eos_token_id"], ignored),
    bos_id=hf["decoder_start_token_id"],
    eos_id=_single_id("eos_token_id", hf["eos_token_id"], ignored),
    pad_id=hf["pad_token_id"],
  )
  return {k: v for k, v in fields.items() if v is not None}, ignored
