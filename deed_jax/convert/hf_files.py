"""Reading and writing Hugging Face checkpoint directories: config.json and the weights file.

Weights come from `model.safetensors` (read with NumPy: no PyTorch needed) or, failing that,
`pytorch_model.bin` through `torch.load(..., weights_only=True)`, which never unpickles arbitrary
objects; a `.bin` that holds anything but tensors is refused. Arrays are handed over as numpy (float32
for floating dtypes) with the source dtypes recorded, so the reverse direction writes every tensor
back in its own dtype (as `model.safetensors`, again without PyTorch).
"""

from __future__ import annotations

import json
import os

import numpy as np

from deed_jax.convert import safetensors_io
from deed_jax.errors import MissingPathError, UserError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"


def read_config(directory: str) -> dict:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise MissingPathError(f"{path} not found: {directory} is not a Hugging Face model directory.")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({e}).") from None
  if not isinstance(config, dict):
    raise UserError(f"{path} holds a JSON {type(config).__name__}, not a model config object.")
  if "auto_map" in config:
    # transformers would offer to run the directory's own Python for such a config; we never do.
    raise UserError(
      f"{path} has an auto_map: its model is defined by code in {directory}, and deed-jax never "
      f"runs code from a checkpoint directory. Convert a checkpoint of a built-in transformers "
      f"architecture (its config.json without auto_map)."
    )
  return config


def resolved_config(directory: str) -> dict:
  """config.json with HF's defaults filled in (nested configs of an encoder-decoder included), as HF's
  own config class reads it. config.json itself omits values equal to the defaults."""
  try:
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
      "Converting a Hugging Face checkpoint needs transformers (the convert extra: "
      "pip install -e '.[convert]')."
    ) from e
  # trust_remote_code=False: transformers never runs the directory's code, nor asks on stdin
  # (`read_config`, called first, refuses such a config with the reason).
  config = transformers.AutoConfig.from_pretrained(
    directory, local_files_only=True, trust_remote_code=False
  )
  return config.to_dict()


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
      "Reading a pytorch_model.bin needs PyTorch (the pytorch extra: pip install -e "
      "'.[convert,pytorch]'); model.safetensors checkpoints convert without it."
    ) from e
  return torch


def _as_float32(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Floating arrays as float32 (what the model is built from); others as they are."""
  return {
    k: v.astype(np.float32)
    if np.issubdtype(v.dtype, np.floating) or v.dtype == safetensors_io.numpy_dtype("bfloat16")
    else v
    for k, v in arrays.items()
  }


def read_weights(directory: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """-> ({key: array}, {key: source dtype name}) from model.safetensors or pytorch_model.bin."""
  safetensors_path = os.path.join(directory, SAFETENSORS_FILE)
  bin_path = os.path.join(directory, BIN_FILE)
  if os.path.isfile(safetensors_path):
    arrays, dtypes = safetensors_io.read(safetensors_path)
    return _as_float32(arrays), dtypes
  if os.path.isfile(bin_path):
    torch = _torch()
    try:
      tensors = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for disallowed objects.
      raise UserError(
        f"{bin_path} cannot be loaded with weights_only=True (it holds objects other "
        f"than tensors, which are never unpickled here): {e}"
      ) from e
    if not isinstance(tensors, dict):
      raise UserError(f"{bin_path} holds a {type(tensors).__name__}, not a state dict of tensors.")
    bad = sorted(f"{k} ({type(v).__name__})" for k, v in tensors.items() if not torch.is_tensor(v))
    if bad:
      raise UserError(f"{bin_path} holds non-tensor entries: {', '.join(bad[:10])}.")
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}
    return {
      k: (v.to(torch.float32) if v.is_floating_point() else v).detach().cpu().numpy()
      for k, v in tensors.items()
    }, dtypes
  raise MissingPathError(
    f"Neither {SAFETENSORS_FILE} nor {BIN_FILE} is in {directory} "
    "(sharded checkpoints are not supported)."
  )


def write_weights(directory: str, tensors: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
  """Write model.safetensors, casting each tensor to its recorded source dtype (default: its own)."""
  out = {
    key: np.asarray(value).astype(safetensors_io.numpy_dtype(dtypes[key]))
    if key in dtypes
    else np.asarray(value)
    for key, value in tensors.items()
  }
  # "format": "pt" is what transformers expects of a PyTorch model's safetensors file.
  safetensors_io.write(os.path.join(directory, SAFETENSORS_FILE), out, metadata={"format": "pt"})
