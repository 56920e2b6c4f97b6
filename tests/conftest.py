"""Shared helpers for the tests: tiny model configs and random inputs."""

from __future__ import annotations

import gc

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax.models import ModelConfig, MultiExitEncoderDecoder

TINY = dict(
  vocab_size=37,
  d_model=32,
  num_heads=4,
  d_ff=48,
  encoder_layers=2,
  decoder_layers=3,
  max_target_length=10,
  max_source_length=12,
  adapter_dim=8,
)


def tiny_config(**overrides) -> ModelConfig:
  values = dict(TINY)
  if overrides.get("encoder") == "image":
    values.update(image_size=(8, 12), patch_size=(4, 3), num_channels=3)
  values.update(overrides)
  return ModelConfig(**values)


def randomize(model: MultiExitEncoderDecoder, seed: int = 0, scale: float = 0.3):
  """Replace every parameter by random values, so zero-initialised adapters and biases matter too."""
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, new))
  return model


def random_inputs(config: ModelConfig, batch: int = 3, target_length: int = 7, seed: int = 0):
  """Encoder inputs with padding (text) or random pixels (image), and decoder ids."""
  rng = np.random.default_rng(seed)
  if config.encoder == "image":
    h, w = config.image_hw
    encoder_inputs = {
      "pixel_values": rng.normal(size=(batch, h, w, config.num_channels)).astype(np.float32)
    }
  else:
    length = config.max_source_length
    ids = rng.integers(3, config.vocab_size, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(2, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    encoder_inputs = {"input_ids": np.where(mask == 1, ids, config.pad_id), "attention_mask": mask}
  decoder_ids = rng.integers(3, config.vocab_size, size=(batch, target_length)).astype(np.int32)
  decoder_ids[:, 0] = config.bos_id
  return encoder_inputs, decoder_ids


@pytest.fixture
def rngs():
  return nnx.Rngs(0)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """Both embedded datasets, `tiny` builds (and forms_vqa's prompted one), prepared once per test
  session."""
  from deed_jax.data import datasets, forms_tfds

  path = str(tmp_path_factory.mktemp("tfds"))
  for name in forms_tfds.BUILDERS:
    datasets.prepare(name, "tiny", path)
  datasets.prepare("forms_vqa", "tiny_normalised_prompted", path)
  return path


# Clear JAX's caches once a worker holds this many memory mappings (see _release_compiled_programs).
MAX_MAPPINGS = 20_000


def _memory_mappings() -> int:
  try:
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux: no such limit to keep clear of
    return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Drop the compiled programs once a worker holds many. XLA:CPU maps each program's code into
  memory, and a worker that keeps them all runs out of memory mappings (vm.max_map_count, 65 530
  here: one file of decoding tests took a process from 4 000 to 27 000 maps), which surfaces as a
  segfault inside a later compile and can leave the other worker hanging. Clearing only past
  MAX_MAPPINGS keeps the programs tests share within a file."""
  yield
  if _memory_mappings() > MAX_MAPPINGS:
    jax.clear_caches()
    gc.collect()
