"""The workdir layout: which file holds what, and every read and write of its JSON files (model config,
training config, calibrated decoding settings) and of the side files that travel with a model's
weights. No orbax here (see `deed_jax.checkpoint`)."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from etils import epath

from deed_jax.decoding import hf_settings
from deed_jax.decoding.config import STORED_FIELDS, DecodeConfig
from deed_jax.errors import UserError
from deed_jax.models import ModelConfig

MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINT_DIR = "checkpoints"
TRAIN_CONFIG_FILE = (
  "train_config.json"  # the training config a run started with (its task, for evaluation)
)
EVALUATION_DIR = "evaluation"  # python -m deed_jax.evaluate: report.json, report.md, plots
# The decoding settings chosen for this model by calibration (python -m deed_jax.evaluate
# --calibrate): what `workdir_decode_config` takes.
DECODE_CONFIG_FILE = "decode_config.json"
GENERATION_CONFIG_FILE = (
  "generation_config.json"  # HF's decoding settings (`workdir_decode_config`)
)
# Files of a Hugging Face model directory that belong with its weights: tokenizer and generation
# settings. A converted workdir keeps them, and its source record for the way back to HF.
HF_SIDE_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "sentencepiece.bpe.model",
  "spiece.model",
  "added_tokens.json",
  GENERATION_CONFIG_FILE,
  "preprocessor_config.json",
)
HF_SOURCE_FILE = "hf_source.json"  # the source config.json, resolved config and tensor dtypes
HF_UNUSED_FILE = "hf_unused.safetensors"  # source tensors the model does not use (ViT's pooler)
# What travels with the weights when training starts from a workdir (`init_from`).
MODEL_SIDE_FILES = HF_SIDE_FILES + (HF_SOURCE_FILE, HF_UNUSED_FILE)


def absolute(path: str) -> epath.Path:
  """A workdir as an absolute path: local paths resolved against the current directory, URLs
  (gs://...) as they are. Every file of a workdir is reached through etils.epath (or orbax, which uses
  it), so a workdir may live on a cloud bucket."""
  path = epath.Path(path)
  return path if "://" in os.fspath(path) else path.absolute()


def model_config_path(workdir: str) -> epath.Path:
  return epath.Path(workdir) / MODEL_CONFIG_FILE


def read_json_file(path) -> Any:
  """A JSON file's value; a file that is not JSON (truncated, corrupt) is a `UserError` naming it."""
  path = epath.Path(path)
  try:
    return json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({e}): a truncated or corrupt file.") from None


def read_model_config(workdir: str) -> ModelConfig | None:
  path = model_config_path(workdir)
  if not path.exists():
    return None
  values = read_json_file(path)
  try:
    return ModelConfig.from_dict(values)
  except (TypeError, AttributeError) as e:
    raise UserError(f"{path} does not describe a model ({e}).") from None


def workdir_decode_config(workdir: str, prompt_length: int = 1, **overrides) -> DecodeConfig:
  """How to decode `workdir`'s model: a converted model's Hugging Face generation settings
  (generation_config.json, else the legacy keys of its config.json: strategy, beams, length penalty,
  early stopping, forced ids, n-gram blocking, bad words, min and max length; `hf_settings`), then
  what calibration chose (decode_config.json, written by `python -m deed_jax.evaluate --calibrate`:
  exit mode, confidence, threshold, min_exit_layer, backfill_chunk), then `overrides`.
  DecodeConfig's defaults for what none of them sets. `prompt_length` (start token included) turns
  HF's max_length / min_length into new-token counts."""
  generation = read_json(workdir, GENERATION_CONFIG_FILE)
  resolved = (read_json(workdir, HF_SOURCE_FILE) or {}).get("resolved", {})
  if generation is None:
    generation = hf_settings.legacy_settings(resolved) if resolved else {}
  if generation and "max_new_tokens" in overrides:  # instead of HF's max_length
    generation = {**generation, "max_new_tokens": overrides["max_new_tokens"]}
  fields, ignored = (
    hf_settings.decode_fields(generation, prompt_length, resolved.get("max_position_embeddings"))
    if generation
    else ({}, [])
  )
  if ignored:
    warnings.warn(
      f"{workdir}: Hugging Face generation settings deed-jax does not implement are ignored: "
      f"{', '.join(ignored)}.",
      stacklevel=2,
    )
  stored = read_json(workdir, DECODE_CONFIG_FILE) or {}
  calibrated = {k: stored[k] for k in STORED_FIELDS if k in stored}
  return DecodeConfig(**{**fields, **calibrated, **overrides})


def stale_calibration(workdir: str, step: int, fingerprint: str) -> str | None:
  """Why decode_config.json's calibrated choice does not belong to checkpoint `step` with these
  parameters (None: it does, or the workdir holds no calibrated choice). Calibration records what it
  ran on (`calibrated_for`: step, parameter fingerprint, data, metric, risk settings, date)."""
  stored = read_json(workdir, DECODE_CONFIG_FILE)
  if stored is None:
    return None
  made = stored.get("calibrated_for")
  if made is None:
    return f"{workdir}/{DECODE_CONFIG_FILE} does not record which checkpoint it was calibrated for"
  if made.get("step") != step or made.get("params_fingerprint") != fingerprint:
    return (
      f"{workdir}/{DECODE_CONFIG_FILE} was calibrated for step {made.get('step')} (parameters "
      f"{made.get('params_fingerprint')}), not for step {step} (parameters {fingerprint}); "
      "recalibrate with python -m deed_jax.evaluate --calibrate"
    )
  return None


def read_json(workdir: str, name: str) -> Any | None:
  """The JSON file `name` of `workdir`, or None when it has none."""
  path = epath.Path(workdir) / name
  return read_json_file(path) if path.exists() else None


def write_json(workdir: str, name: str, value: Any) -> None:
  """Write `value` to `workdir/name` whole: into a sibling first, then renamed over it."""
  path = epath.Path(workdir) / name
  partial = path.parent / f".{name}.partial"
  partial.write_text(json.dumps(value, indent=2))
  partial.replace(path)  # over an older one, if any


def check_compatible_workdir(workdir: str, config: ModelConfig) -> None:
  """Raise if `workdir` already belongs to a model of another architecture. Writes nothing."""
  stored = read_model_config(workdir)
  if stored is None or stored == config:
    return
  old, new = stored.to_dict(), config.to_dict()
  diffs = {k: (old[k], new[k]) for k in sorted(old) if old[k] != new[k]}
  shown = ", ".join(f"{k}: {a!r} in the workdir vs {b!r} requested" for k, (a, b) in diffs.items())
  raise UserError(
    f"Workdir {workdir} holds a checkpoint of a different model ({shown}). "
    "Use another --workdir; the existing checkpoint was left untouched."
  )


def copy_side_files(
  source_dir: str, target_dir: str, names: tuple[str, ...] = MODEL_SIDE_FILES
) -> list[str]:
  """Copy the files `names` present in `source_dir` (and absent in `target_dir`); returns their names.
  The default travels with a model between workdirs; HF directories get HF_SIDE_FILES only."""
  copied = []
  for name in names:
    source, target = epath.Path(source_dir) / name, epath.Path(target_dir) / name
    if source.is_file() and not target.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      source.copy(target)
      copied.append(name)
  return copied
