"""The decoder-layer KV-cache seam: filling a preallocated cache block by block (as DEED's
just-in-time backfill does) gives exactly the features of the teacher-forced full pass."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.models.transformer_layer import ordered_after
from tests.conftest import random_inputs, randomize, tiny_config

OVERRIDES = [
  {},
  {"position_embedding": "relative", "norm_type": "rmsnorm"},
  {"norm_position": "post", "encoder": "image"},
]
BLOCKS = [[1] * 7, [3, 1, 2, 1], [7]]


# Every option set with mixed blocks, and every block pattern with the default options, by default.
@pytest.mark.parametrize(
  "overrides, blocks",
  [
    pytest.param(
      overrides, blocks, marks=[pytest.mark.slow] if overrides and blocks != BLOCKS[1] else []
    )
    for overrides in OVERRIDES
    for blocks in BLOCKS
  ],
)
def test_blockwise_cached_decoding_equals_full_pass(overrides, blocks):
  config = tiny_config(**overrides)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=7, scale=0.2)
  encoder_inputs, decoder_ids = random_inputs(config, batch=2, target_length=7)
  full = np.asarray(model.exit_features(encoder_inputs, decoder_ids))  # [L, B, T, D]

  decoder = model.decoder
  memory = decoder.cross_memory(*model.encode(encoder_inputs))
  caches = list(
    decoder.init_cache(2, config.max_target_length)
  )  # longer than the 7 positions decoded
  outputs, start = [], 0
  for size in blocks:
    x = decoder.embed(
      decoder_ids[:, start : start + size], jnp.arange(start, start + size)
    )  # [B,W,D]
    exits = []
    for j in range(config.decoder_layers):
      x, caches[j] = decoder.run_block(j, x, start, caches[j], memory)
      exits.append(decoder.exit(j, x))
    outputs.append(np.stack(exits))
    start += size
  np.testing.assert_allclose(np.concatenate(outputs, axis=2), full, atol=2e-5)


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_ordering_a_cache_write_after_attention_never_changes_the_values(poison):
  """The write is made to depend on the attention output; a NaN or inf there must not leak into the
  cache (0 * inf is NaN)."""
  x = jnp.arange(6.0).reshape(1, 2, 3)
  dependency = jnp.full((2, 2), poison)
  np.testing.assert_array_equal(np.asarray(ordered_after(x, dependency)), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(ordered_after(x, jnp.full((2,), 3.5))), np.asarray(x))
