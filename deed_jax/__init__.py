"""deed-jax: DEED (Dynamic Early Exit on Decoder) for encoder-decoder transformers in JAX/Flax NNX."""

__version__ = "0.1.0"
