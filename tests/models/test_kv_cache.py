"""The decoder-layer KV-cache seam: filling a preallocated cache block by block (as DEED's
just-in-time backfill does) gives exactly the features of the teacher-forced full pass."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.models.transformer import KVCache, padding_bias
from tests.conftest import random_inputs, randomize, tiny_config


OVERRIDES = [{}, {"position_embedding": "relative", "norm_type": "rmsnorm"},
             {"norm_position": "post", "encoder": "image"}]
BLOCKS = [[1] * 7, [3, 1, 2, 1], [7]]


# Every option set with mixed blocks, and every block pattern with the default options, by default.
@pytest.mark.parametrize("overrides, blocks", [
    pytest.param(overrides, blocks, marks=[pytest.mark.slow] if overrides and blocks != BLOCKS[1] else [])
    for overrides in OVERRIDES for blocks in BLOCKS])
def test_blockwise_cached_decoding_equals_full_pass(overrides, blocks):
  config = tiny_config(**overrides)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=7, scale=0.2)
  encoder_inputs, decoder_ids = random_inputs(config, batch=2, target_length=7)
  full = np.asarray(model.exit_features(encoder_inputs, decoder_ids))  # [L, B, T, D]

  decoder = model.decoder
  encoder_out, encoder_mask = model.encode(encoder_inputs)
  cross_kv = decoder.cross_kv(encoder_out)
  cross_bias = padding_bias(encoder_mask)
  max_length = config.max_target_length  # The cache is longer than the 7 positions decoded.
  heads, head_dim = config.num_heads, config.resolved_head_dim
  caches = [KVCache(jnp.zeros((2, heads, max_length, head_dim)), jnp.zeros((2, heads, max_length, head_dim)))
            for _ in range(config.decoder_layers)]
  key_positions = jnp.arange(max_length)
  outputs, start = [], 0
  for size in blocks:
    positions = jnp.arange(start, start + size)
    x = decoder.embed(decoder_ids[:, start:start + size], positions, model.token_embedding[...])
    bias = decoder.self_bias(positions, key_positions)  # [1, 1|H, size, T_max]
    exits = []
    for index, layer in enumerate(decoder.layers):
      x, caches[index] = layer(x, bias, cross_kv=cross_kv[index], cross_bias=cross_bias,
                               cache=caches[index], cache_index=start)
      exits.append(decoder.exit_features(x, index))
    outputs.append(np.stack(exits))
    start += size
  np.testing.assert_allclose(np.concatenate(outputs, axis=2), full, atol=2e-5)
