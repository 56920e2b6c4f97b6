"""Hugging Face PyTorch directory -> deed-jax workdir (orbax checkpoint + model_config.json).

The workdir is the same kind a training run writes, so `deed_jax.checkpoint.load_model` restores it
and training can start from it. Beside it, `hf_source.json` keeps the source config.json and dtypes
(for the way back, `export_hf`), and the tokenizer files are copied.

The exit modules HF models lack (adapters, exit classifier) start fresh, except in a directory
deed-jax exported (`export_hf`): its exit modules file and model config bring them back as trained.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from deed_jax import checkpoint
from deed_jax.convert import hf_files, rules, safetensors_io
from deed_jax.convert.families import family_for
from deed_jax.convert.options import ConvertOptions
from deed_jax.convert.rules import ConversionError
from deed_jax.models import ModelConfig
from deed_jax.models.exits import ExitAdapter, ExitClassifier
from deed_jax.param_tree import path_name
from deed_jax.staging import check_empty_target, staged_directory
from deed_jax.workdir import HF_SIDE_FILES, HF_SOURCE_FILE, HF_UNUSED_FILE, copy_side_files

ADAPTER_PREFIX = "decoder/adapters/"
CLASSIFIER_PREFIX = "decoder/exit_classifier/"
EXIT_PREFIXES = (ADAPTER_PREFIX, CLASSIFIER_PREFIX)  # our parameters HF models have no place for
# What `export_hf` writes beside an HF model: the exit modules (keyed by our parameter paths) and our
# ModelConfig.
EXIT_MODULES_FILE = "deed_exit_modules.safetensors"
EXPORTED_MODEL_CONFIG_FILE = "deed_model_config.json"


class ConvertedCheckpoint(NamedTuple):
  config: ModelConfig
  params: Any  # pure dict of numpy arrays, the structure `load_model` restores
  # config.json as written ("config"), with HF's defaults filled in ("resolved"), and each source
  # tensor's dtype ("dtypes"): what `orbax_to_hf` needs for the way back.
  record: dict
  unused: dict[str, np.ndarray]  # source tensors the mapping ignores


def initial_exit_modules(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
  """Fresh exit adapters (the identity: their output halves start at zero) and exit classifier (if
  the config has one), by our parameter path."""
  rngs = nnx.Rngs(seed)
  modules = [
    (f"{ADAPTER_PREFIX}{layer}/", ExitAdapter(config, rngs))
    for layer in range(config.decoder_layers)
  ]
  if config.exit_classifier != "none":
    modules.append((CLASSIFIER_PREFIX, ExitClassifier(config, rngs)))
  return {
    prefix + name: np.asarray(v)
    for prefix, module in modules
    for name, v in nnx.to_pure_dict(nnx.state(module, nnx.Param)).items()
  }


def exported_exit_modules(source: str) -> tuple[ModelConfig, dict[str, np.ndarray]] | None:
  """The ModelConfig and exit modules of a directory deed-jax exported, or None for any other."""
  config_path = os.path.join(source, EXPORTED_MODEL_CONFIG_FILE)
  modules_path = os.path.join(source, EXIT_MODULES_FILE)
  if not os.path.isfile(config_path):
    return None
  with open(config_path) as f:
    config = ModelConfig.from_json(f.read())
  return config, safetensors_io.read(modules_path)[0] if os.path.isfile(modules_path) else {}


def convert_params(source: str, options: ConvertOptions = ConvertOptions()) -> ConvertedCheckpoint:
  """Read and convert an HF directory in memory; raises before returning anything if it does not fit."""
  raw = hf_files.read_config(source)
  family = family_for(raw)  # refuses an unsupported architecture before anything else
  hf = hf_files.resolved_config(source)
  exported = exported_exit_modules(source)
  options = options.resolved(None if exported is None else exported[0])
  config = family.model_config(hf, options)
  weights, dtypes = hf_files.read_weights(source)
  _, abstract = checkpoint.abstract_params(config)
  shapes = {k: v.shape for k, v in checkpoint.flat_params(abstract).items()}
  keymap = family.keymap(config, hf)
  converted = rules.to_ours(keymap, weights, shapes, source)
  exits = initial_exit_modules(config, options.seed)
  if exported is not None:  # the exit modules as they were exported, checked like HF's tensors
    held = exported[1]
    wrong = sorted(
      f"{k}: {held[k].shape if k in held else 'missing'} vs {v.shape}"
      for k, v in exits.items()
      if k not in held or held[k].shape != v.shape
    )
    wrong += sorted(f"{k}: not a parameter of this model" for k in set(held) - set(exits))
    if wrong:
      raise ConversionError(
        f"{os.path.join(source, EXIT_MODULES_FILE)} does not fit the model its "
        f"{EXPORTED_MODEL_CONFIG_FILE} describes: {'; '.join(wrong[:10])}."
      )
    exits = held
  converted.update(exits)
  uncovered = sorted(set(shapes) - set(converted))
  if (
    uncovered
  ):  # A mapping that forgets one of our parameters is a bug here, not in the checkpoint.
    raise RuntimeError(f"The {family.__name__} mapping does not cover {uncovered}.")
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: converted[path_name(path)].astype(x.dtype), abstract
  )
  unused = {key: weights[key] for key in keymap.ignored if key in weights}
  return ConvertedCheckpoint(
    config, params, {"config": raw, "resolved": hf, "dtypes": dtypes}, unused
  )


def hf_to_orbax(
  source: str, workdir: str, options: ConvertOptions = ConvertOptions()
) -> ModelConfig:
  """Convert the HF checkpoint in `source` into a new deed-jax workdir. Returns its ModelConfig.

  Everything is read and checked before anything is written; `workdir` must be new or empty.
  """
  check_empty_target(workdir)
  converted = convert_params(source, options)
  with staged_directory(workdir) as staging:
    checkpoint.save_params(staging, converted.config, converted.params)
    with open(os.path.join(staging, HF_SOURCE_FILE), "w") as f:
      json.dump(converted.record, f, indent=2, sort_keys=True)
    if converted.unused:
      safetensors_io.write(os.path.join(staging, HF_UNUSED_FILE), converted.unused)
    copy_side_files(source, staging, HF_SIDE_FILES)
  return converted.config
