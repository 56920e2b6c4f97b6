"""The random encoder-decoder the decoding benchmarks time, and its inputs (speed does not depend on
what the weights learned)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from deed_jax.models import ModelConfig, MultiExitEncoderDecoder


def bench_model(
  layers: int,
  d_model: int,
  heads: int,
  d_ff: int,
  vocab: int,
  source_length: int,
  max_new_tokens: int,
) -> MultiExitEncoderDecoder:
  """A pre-norm text encoder-decoder (2 encoder layers: the encoder is timed apart)."""
  config = ModelConfig(
    vocab_size=vocab,
    d_model=d_model,
    num_heads=heads,
    d_ff=d_ff,
    encoder_layers=2,
    decoder_layers=layers,
    max_source_length=source_length,
    max_target_length=max_new_tokens,
    adapter="linear",
    exit_classifier="linear",
  )
  return MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))


def inputs_for(config: ModelConfig, batch: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, config.vocab_size, size=(batch, config.max_source_length)).astype(np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
