r"""Run a workdir's model on one's own input: an image or a text, optionally after a decoder prompt.

  python -m deed_jax.generate --workdir workdirs/donut --image page.png \
      --prompt "<s_docvqa><s_question>What is the date?</s_question><s_answer>"
  python -m deed_jax.generate --workdir workdirs/bart --text "A long article ..." \
      --config.exit_mode=static --config.num_beams=4

Decodes as `workdir_decode_config(workdir)` says: a converted model's generation settings, then the
threshold and exit settings calibration stored (`python -m deed_jax.evaluate --calibrate`), then the
`--config.<field>=value` overrides (any scalar field of `DecodeConfig`: exit_mode, threshold,
num_beams, max_new_tokens, ...). Prints the decoded text, each token with the decoder layer it
exited at, and the latency (the median of `--repeats` calls after a compiling one).

The image is fitted to the model's input size as its training data was (pad or resize, as the
workdir's preprocessor_config.json says) and normalised to [-1, 1]; a text is encoded as the
model's sources were. `--prompt` is the decoder's prefix as its tokens, exactly as the datasets' prompts
are fed (Donut's starts with its task token); without one the decoder starts from its start token.
The tokenizer is the one the workdir was trained with (train_config.json), else the workdir's own
tokenizer files (a converted model), else the byte tokenizer.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_dict, config_flags
from PIL import Image

from deed_jax import checkpoint, cli
from deed_jax.data import pipeline, vqa_tfds
from deed_jax.data.tokenizer import ByteTokenizer, Tokenizer, get_tokenizer
from deed_jax.decoding import DecodeOutput, make_generate
from deed_jax.errors import MissingPathError, UserError
from deed_jax.models import ModelConfig
from deed_jax.models.config import IMAGE_ENCODERS
from deed_jax.timing import timed
from deed_jax.workdir import TRAIN_CONFIG_FILE, read_json, read_model_config, workdir_decode_config

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

try:  # the flag reads its --config.* overrides from sys.argv as it is defined
  _CONFIG = config_flags.DEFINE_config_dict(
    "config",
    ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in OVERRIDABLE.items()}),
    "DecodeConfig overrides, e.g. --config.exit_mode=static --config.threshold=0.8.",
  )
except (AttributeError, KeyError) as e:
  cli.unknown_option(e)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained or converted deed-jax workdir.")
_IMAGE = flags.DEFINE_string("image", None, "An image file (image-encoder models).")
_TEXT = flags.DEFINE_string("text", None, "A source text (text-encoder models).")
_PROMPT = flags.DEFINE_string("prompt", None, "The decoder prompt (its tokens are the prefix).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the compiling one.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step (default: the newest).")


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


def run(
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
    config = workdir_decode_config(workdir, length, **{**overrides, "max_new_tokens": room})
  generate = make_generate(checkpoint.load_model(workdir, step), config)  # checks the config
  prompts = None if prompt_ids is None else [prompt_ids]
  _, compile_seconds = timed(generate, inputs, None, prompts)
  times = []
  for _ in range(repeats):
    out, seconds = timed(generate, inputs, None, prompts)
    times.append(seconds)
  return _result(out, tokenizer, generate.config, float(np.median(times)), compile_seconds)


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


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  overrides = {k: v for k, v in _CONFIG.value.items() if v is not None}
  result = run(
    _WORKDIR.value,
    image=_IMAGE.value,
    text=_TEXT.value,
    prompt=_PROMPT.value,
    overrides=overrides,
    repeats=_REPEATS.value,
    step=_STEP.value,
  )
  config = result["config"]
  rule = f"{config.exit_mode}" + (
    f", threshold {config.threshold:g}" if config.exit_mode in ("deed", "copy", "oracle") else ""
  )
  print(result["text"])
  print("tokens (exit layer): " + " ".join(f"{t!r}({l})" for t, l in result["tokens"]))
  print(
    f"{result['decode_ms']:.2f} ms (median of {_REPEATS.value} calls; compiling took "
    f"{result['compile_s']:.1f} s); {config.strategy}, {rule}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)  # (no jax.config.config_with_absl: it would parse --config.* outside cli.run)
