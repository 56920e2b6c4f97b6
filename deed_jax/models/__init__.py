"""Multi-exit encoder-decoder models (Flax NNX)."""

from deed_jax.models.config import ModelConfig
from deed_jax.models.model import MultiExitEncoderDecoder, check_token_ids

__all__ = ["ModelConfig", "MultiExitEncoderDecoder", "check_token_ids"]
