"""Decoding with step-level early exit. `reference` holds the naive decoders that the fast DEED
decoder is tested against."""

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import Generate, generate, make_generate
from deed_jax.decoding.output import DecodeOutput, Hypotheses

__all__ = ["DecodeConfig", "DecodeOutput", "Generate", "Hypotheses", "generate", "make_generate"]
