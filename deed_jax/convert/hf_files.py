"""Reading and writing Hugging Face checkpoint directories: config.json and the weights file.

Weights come from `model.safetensors` or, failing that, `pytorch_model.bin` through
`torch.load(..., weights_only=True)`, which never unpickles arbitrary objects; a `.bin` that holds
anything but tensors is refused. Arrays are handed over as numpy (float32 for floating dtypes) with the
source dtypes recorded, so the reverse direction writes every tensor back in its own dtype.
"""

from __future__ import annotations

import json
import os

import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"


def read_config(directory: str) -> dict:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a Hugging Face model directory.")
  with open(path) as f:
    return json.load(f)


def resolved_config(directory: str) -> dict:
  """config.json with HF's defaults filled in (nested configs of an encoder-decoder included), as HF's
  own config class reads it. config.json itself omits values equal to the defaults."""
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.AutoConfig.from_pretrained(directory, local_files_only=True).to_dict()


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading or writing PyTorch checkpoints needs the convert extra: "
                      "pip install -e '.[convert]'") from e
  return torch


def _to_numpy(tensor) -> np.ndarray:
  torch = _torch()
  if tensor.is_floating_point():
    tensor = tensor.to(torch.float32)
  return tensor.detach().cpu().numpy()


def read_weights(directory: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """-> ({key: array}, {key: source dtype name}) from model.safetensors or pytorch_model.bin."""
  torch = _torch()
  safetensors_path = os.path.join(directory, SAFETENSORS_FILE)
  bin_path = os.path.join(directory, BIN_FILE)
  if os.path.isfile(safetensors_path):
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    tensors = load_file(safetensors_path)
  elif os.path.isfile(bin_path):
    try:
      tensors = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for disallowed objects.
      raise ValueError(f"{bin_path} cannot be loaded with weights_only=True (it holds objects other "
                       f"than tensors, which are never unpickled here): {e}") from e
    if not isinstance(tensors, dict):
      raise ValueError(f"{bin_path} holds a {type(tensors).__name__}, not a state dict of tensors.")
    bad = sorted(f"{k} ({type(v).__name__})" for k, v in tensors.items() if not torch.is_tensor(v))
    if bad:
      raise ValueError(f"{bin_path} holds non-tensor entries: {', '.join(bad[:10])}.")
  else:
    raise FileNotFoundError(f"Neither {SAFETENSORS_FILE} nor {BIN_FILE} is in {directory} "
                            "(sharded checkpoints are not supported).")
  dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}
  return {k: _to_numpy(v) for k, v in tensors.items()}, dtypes


def write_weights(directory: str, tensors: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
  """Write model.safetensors, casting each tensor to its recorded source dtype (default float32)."""
  torch = _torch()
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  out = {}
  for key, value in tensors.items():
    tensor = torch.from_numpy(np.array(value, copy=True))  # writable: torch refuses read-only arrays
    out[key] = tensor.to(getattr(torch, dtypes.get(key, str(tensor.dtype).removeprefix("torch."))))
  save_file(out, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
