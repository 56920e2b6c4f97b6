"""A safetensors checkpoint converts, decodes and goes back to HF in an environment without PyTorch:
a real interpreter whose import path holds every installed package except torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
from flax import nnx
from safetensors.torch import load_file

from deed_jax import checkpoint
from deed_jax.convert import hf_to_orbax
from deed_jax.decoding import DecodeConfig, generate
from tests.convert import hf_models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TORCH_PACKAGES = ("torch", "functorch", "torchgen", "nvidia", "triton")

_CHILD = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("torch") is None, "torch is importable"
import numpy as np
from deed_jax import checkpoint
from deed_jax.convert import hf_to_orbax, orbax_to_hf
from deed_jax.decoding import DecodeConfig, generate
source, workdir, exported, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
hf_to_orbax(source, workdir)
model = checkpoint.load_model(workdir)
inputs = {"input_ids": np.array(ids, np.int32), "attention_mask": (np.array(ids) > 0).astype(np.int32)}
tokens = generate(model, inputs, DecodeConfig(exit_mode="static", max_new_tokens=6)).tokens
orbax_to_hf(workdir, exported)
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps(np.asarray(tokens).tolist()))
"""


def _site_packages_without_torch(root) -> str:
  """A directory of links to every entry of this interpreter's site-packages but PyTorch's."""
  site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
  mirror = root / "site-packages"
  mirror.mkdir()
  for name in os.listdir(site):
    if not name.lower().startswith(_TORCH_PACKAGES) and not name.endswith(".pth"):
      os.symlink(os.path.join(site, name), mirror / name)
  return str(mirror)


def test_a_safetensors_checkpoint_converts_decodes_and_exports_without_torch(tmp_path):
  hf = hf_models.build("bart")
  hf.save_pretrained(tmp_path / "hf")
  ids = [[5, 9, 30, 12, 2, 0], [7, 8, 2, 0, 0, 0]]
  env = {
    "PATH": os.environ.get("PATH", ""),
    "JAX_PLATFORMS": "cpu",
    "HOME": str(tmp_path),
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),  # the same floats as this process's init
    "PYTHONPATH": os.pathsep.join([_site_packages_without_torch(tmp_path), REPO]),
  }
  # -S: no site-packages but the mirror's (and no .pth hooks).
  run = subprocess.run(
    [
      sys.executable,
      "-S",
      "-c",
      _CHILD,
      str(tmp_path / "hf"),
      str(tmp_path / "orbax"),
      str(tmp_path / "exported"),
      json.dumps(ids),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  tokens = json.loads(run.stdout.strip().splitlines()[-1])

  # The same conversion with PyTorch present: every parameter and the decoded tokens agree.
  hf_to_orbax(str(tmp_path / "hf"), str(tmp_path / "with_torch"))
  expected = checkpoint.load_model(str(tmp_path / "with_torch"))
  converted = checkpoint.load_model(str(tmp_path / "orbax"))
  params = lambda m: {
    k: np.asarray(v)
    for k, v in checkpoint.flat_params(nnx.to_pure_dict(nnx.state(m, nnx.Param))).items()
  }
  want, got = params(expected), params(converted)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  inputs = {
    "input_ids": np.array(ids, np.int32),
    "attention_mask": (np.array(ids) > 0).astype(np.int32),
  }
  assert (
    tokens
    == np.asarray(
      generate(expected, inputs, DecodeConfig(exit_mode="static", max_new_tokens=6)).tokens
    ).tolist()
  )
  # The export written without PyTorch is HF's model again, tensor for tensor.
  source = load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
  assert sorted(exported) == sorted(source)
  for key, tensor in source.items():
    assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key
