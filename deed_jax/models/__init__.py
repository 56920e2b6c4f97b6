"""Multi-exit encoder-decoder models (Flax NNX)."""

from deed_jax.models.config import ModelConfig
from deed_jax.models.model import (
  ENCODER_KEYS,
  MultiExitEncoderDecoder,
  check_token_ids,
  encoder_inputs,
)

__all__ = [
  "ENCODER_KEYS",
  "ModelConfig",
  "MultiExitEncoderDecoder",
  "check_token_ids",
  "encoder_inputs",
]
