"""deed-jax workdir -> Hugging Face directory (`model.safetensors` + `config.json`), so a model
fine-tuned here can be served with PyTorch. The exit modules HF models lack (adapters, exit
classifier) are written beside it as `deed_exit_modules.safetensors` (keyed by our parameter paths)
with `deed_model_config.json`; converting the directory back (`import_hf`) restores them."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
from flax import nnx

from deed_jax import checkpoint
from deed_jax.convert import hf_files, rules, safetensors_io
from deed_jax.convert.families import family_for
from deed_jax.convert.import_hf import (
  ADAPTER_PREFIX,
  EXIT_MODULES_FILE,
  EXIT_PREFIXES,
  EXPORTED_MODEL_CONFIG_FILE,
)
from deed_jax.errors import MissingPathError, UserError
from deed_jax.staging import check_empty_target, staged_directory
from deed_jax.workdir import (
  HF_SIDE_FILES,
  HF_SOURCE_FILE,
  HF_UNUSED_FILE,
  copy_side_files,
  read_json_file,
)

_ADAPTER_RESIDUAL = ("up", "up_bias", "w", "b")  # zero in an identity adapter (ExitAdapter)


def _warn_if_last_adapter_moved(adapters: dict[str, np.ndarray], num_layers: int) -> None:
  """HF's model has no exit adapters: it computes our last exit only while that adapter is the
  identity (as converted). After training it usually is not, which the user should know."""
  prefix = f"{ADAPTER_PREFIX}{num_layers - 1}/"
  moved = max(
    (
      float(np.abs(v).max())
      for k, v in adapters.items()
      if k.startswith(prefix) and k.removeprefix(prefix) in _ADAPTER_RESIDUAL
    ),
    default=0.0,
  )
  if moved > 0:
    warnings.warn(
      f"The last exit adapter is not the identity (residual weights up to {moved:.3g}); the "
      "exported Hugging Face model has no adapters, so its logits are the last layer's without "
      f"it. The adapters are in {EXIT_MODULES_FILE}.",
      stacklevel=3,
    )


def read_hf_source(workdir: str) -> dict:
  path = os.path.join(workdir, HF_SOURCE_FILE)
  if not os.path.isfile(path):
    raise MissingPathError(
      f"{path} not found: only workdirs converted from (or trained from) a Hugging "
      "Face checkpoint can be exported to one."
    )
  source = read_json_file(path)
  if not isinstance(source, dict) or not {"resolved", "dtypes"} <= set(source):
    raise UserError(
      f"{path} lacks the source model's resolved config and dtypes (keys 'resolved', 'dtypes'): "
      "it was not written by python -m deed_jax.convert, or was damaged."
    )
  return source


def orbax_to_hf(workdir: str, target: str, step: int | None = None) -> None:
  """Write the model of `workdir` (newest step by default) as an HF directory `target` (new or empty)."""
  check_empty_target(target)
  source = read_hf_source(workdir)
  hf, dtypes = source["resolved"], source["dtypes"]
  model = checkpoint.load_model(workdir, step)
  ours = {
    k: np.asarray(v)
    for k, v in checkpoint.flat_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()
  }
  tensors = rules.to_hf(family_for(hf).keymap(model.config, hf), ours)
  unused = os.path.join(workdir, HF_UNUSED_FILE)
  if os.path.isfile(unused):
    tensors.update(safetensors_io.read(unused)[0])
  exit_modules = {k: v for k, v in ours.items() if k.startswith(EXIT_PREFIXES)}
  _warn_if_last_adapter_moved(exit_modules, model.config.decoder_layers)
  with staged_directory(target) as staging:
    hf_files.write_weights(staging, tensors, dtypes)
    with open(os.path.join(staging, hf_files.CONFIG_FILE), "w") as f:
      json.dump(source["config"], f, indent=2, sort_keys=True)  # config.json as the source wrote it
    if exit_modules:
      safetensors_io.write(os.path.join(staging, EXIT_MODULES_FILE), exit_modules)
    with open(os.path.join(staging, EXPORTED_MODEL_CONFIG_FILE), "w") as f:
      f.write(model.config.to_json())
    copy_side_files(workdir, staging, HF_SIDE_FILES)
