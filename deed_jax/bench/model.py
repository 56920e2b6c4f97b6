"""The random encoder-decoder the decoding benchmarks time, and its inputs (speed does not depend on
what the weights learned)."""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import flags
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


@dataclasses.dataclass(frozen=True)
class Shape:
  layers: int
  d_model: int
  heads: int
  d_ff: int
  vocab: int
  source_length: int


class ModelFlags:
  """The benchmark model's shape as command-line flags, one definition for every benchmark (each
  `python -m deed_jax.bench.*` defines them once, with its own defaults)."""

  def __init__(
    self,
    decoder_layers: int = 12,
    d_model: int = 512,
    num_heads: int = 8,
    d_ff: int = 2048,
    vocab_size: int = 32128,
    source_length: int = 64,
  ):
    self._flags = (
      flags.DEFINE_integer("decoder_layers", decoder_layers, "Decoder layers (exits)."),
      flags.DEFINE_integer("d_model", d_model, "Model width."),
      flags.DEFINE_integer("num_heads", num_heads, "Attention heads."),
      flags.DEFINE_integer("d_ff", d_ff, "MLP width."),
      flags.DEFINE_integer("vocab_size", vocab_size, "Vocabulary."),
      flags.DEFINE_integer("source_length", source_length, "Encoder input length."),
    )

  @property
  def shape(self) -> Shape:
    return Shape(*(f.value for f in self._flags))

  def model(self, max_target_length: int) -> MultiExitEncoderDecoder:
    """`bench_model` of the flags' shape, with `max_target_length` decoder positions."""
    return bench_model(*dataclasses.astuple(self.shape), max_target_length)
