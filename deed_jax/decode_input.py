"""Decoding one input of one's own (an image or a text, optionally after a decoder prompt) with a
workdir's model, as `python -m deed_jax.generate` runs it (see there). Kept apart from the command
line's flags, so that it can be imported beside other commands."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from deed_jax import checkpoint
from deed_jax.data import pipeline, vqa_tfds
from deed_jax.data.tokenizer import ByteTokenizer, Tokenizer, get_tokenizer
from deed_jax.decoding import DecodeOutput, make_generate
from deed_jax.errors import MissingPathError, UserError
from deed_jax.models import ModelConfig
from deed_jax.models.config import IMAGE_ENCODERS
from deed_jax.timing import timed
from deed_jax.workdir import (
  TRAIN_CONFIG_FILE,
  read_json,
  read_model_config,
  stale_calibration,
  workdir_decode_config,
)

# The DecodeConfig fields the command line may override, with their types (None: not overridden).
OVERRIDABLE = dict(
  strategy=str,
  num_beams=int,
  max_new_tokens=int,
  length_penalty=float,
  early_stopping=bool,
  exit_mode=str,
  confidence=str,
  threshold=float,
  min_exit_layer=int,
  fixed_exit_layer=int,
  backfill_chunk=int,
  no_repeat_ngram_size=int,
  min_new_tokens=int,
  forced_bos_id=int,
  forced_eos_id=int,
)


def workdir_tokenizer(workdir: str) -> Tokenizer:
  """The tokenizer the workdir's model reads and writes (see the module docstring)."""
  stored = read_json(workdir, TRAIN_CONFIG_FILE)
  if stored is not None:
    return pipeline.task_tokenizer(ml_collections.ConfigDict(stored["task"]))
  if any(os.path.isfile(os.path.join(workdir, n)) for n in ("tokenizer.json", "spiece.model")):
    return get_tokenizer(workdir)
  return ByteTokenizer()


def encoder_input(workdir: str, config: ModelConfig, tokenizer: Tokenizer, image, text) -> dict:
  """One example's encoder inputs (batch of 1) from an image path or a text; checked first."""
  if config.encoder in IMAGE_ENCODERS:
    if image is None or text is not None:
      raise UserError(f"The model of {workdir} reads images: give --image (and no --text).")
    if not os.path.isfile(image):
      raise MissingPathError(f"--image {image} is not a file.")
    fit = vqa_tfds.image_config(vqa_tfds.image_config_name(workdir, config.image_size))
    try:
      with Image.open(image) as opened:
        pixels = vqa_tfds.fit_image(opened, fit.height, fit.width, fit.fit)
    except OSError as e:
      raise UserError(f"--image {image} is not an image PIL can read ({e}).") from None
    return {"pixel_values": pipeline.pixel_values(pixels)[None]}
  if text is None or image is not None:
    raise UserError(f"The model of {workdir} reads text: give --text (and no --image).")
  ids = tokenizer.encode_source(text, config.max_source_length)
  mask = np.zeros((1, config.max_source_length), np.int32)
  mask[0, : len(ids)] = 1
  tokens = np.full((1, config.max_source_length), tokenizer.pad_id, np.int32)
  tokens[0, : len(ids)] = ids
  return {"input_ids": tokens, "attention_mask": mask}


def decode_input(
  workdir: str,
  *,
  image: str | None = None,
  text: str | None = None,
  prompt: str | None = None,
  overrides: dict[str, Any] | None = None,
  repeats: int = 5,
  step: int | None = None,
) -> dict:
  """Decode one input; -> {text, tokens: [(token text, exit layer)], decode_ms, compile_s, config}.
  Everything a user can get wrong is checked before the model is loaded or anything compiles."""
  model_config = read_model_config(workdir)
  if model_config is None:
    raise MissingPathError(f"--workdir {workdir} holds no model_config.json.")
  if repeats < 1:
    raise UserError(f"--repeats={repeats} must be >= 1.")
  tokenizer = workdir_tokenizer(workdir)
  inputs = encoder_input(workdir, model_config, tokenizer, image, text)
  prompt_ids = None if prompt is None else tokenizer.encode(prompt)
  if prompt_ids is not None and not prompt_ids:
    raise UserError("--prompt is empty: leave it out to start from the start token alone.")
  length = 1 if prompt_ids is None else len(prompt_ids)
  overrides = dict(overrides or {})
  config = workdir_decode_config(workdir, length, **overrides)
  room = model_config.max_target_length - length + 1  # the new tokens the decoder has positions for
  if "max_new_tokens" not in overrides and config.max_new_tokens > room:
    config = dataclasses.replace(config, max_new_tokens=room)
  step, model = checkpoint.load_step(workdir, step)
  warn_if_stale(workdir, step, model)
  generate = make_generate(model, config)  # checks the config
  prompts = None if prompt_ids is None else [prompt_ids]
  _, compile_seconds = timed(generate, inputs, None, prompts)
  times = []
  for _ in range(repeats):
    out, seconds = timed(generate, inputs, None, prompts)
    times.append(seconds)
  return _result(out, tokenizer, generate.config, float(np.median(times)), compile_seconds)


_WARNED: set[tuple[str, int]] = set()


def warn_if_stale(workdir: str, step: int, model) -> None:
  """Warn, once per workdir and step, when decode_config.json was calibrated for another
  checkpoint (a retrained model keeps an older threshold only with a warning)."""
  if (workdir, step) in _WARNED:
    return
  stale = stale_calibration(workdir, step, checkpoint.params_fingerprint(model))
  if stale:
    _WARNED.add((workdir, step))
    warnings.warn(f"{stale}; decoding with it anyway.", stacklevel=2)


def _result(out: DecodeOutput, tokenizer: Tokenizer, config, seconds: float, compile_s: float):
  tokens, layers = np.asarray(out.tokens)[0], np.asarray(out.exit_layers)[0]
  emitted = [
    (tokenizer.decode([int(t)]) or f"<{int(t)}>", int(l)) for t, l in zip(tokens, layers) if l > 0
  ]
  return {
    "text": tokenizer.decode(tokens),
    "tokens": emitted,
    "decode_ms": 1000 * seconds,
    "compile_s": compile_s,
    "config": config,
  }
