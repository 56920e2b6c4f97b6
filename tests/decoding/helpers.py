"""Small random models whose exits spread over many layers, and thresholds that make them do so."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.reference import greedy_reference
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import randomize, tiny_config

# (encoder, seed) pairs whose 4-layer random models exit at >= 3 distinct layers for some threshold.
SPREAD_SEEDS = (("text", 0), ("image", 3), ("text", 2), ("image", 2))


def spread_model(encoder: str, seed: int) -> MultiExitEncoderDecoder:
  config = tiny_config(encoder=encoder, decoder_layers=4, vocab_size=11, max_target_length=10)
  return randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), seed=seed, scale=0.5)


def distinct_exits(exit_layers) -> int:
  layers = np.asarray(exit_layers)
  return len(set(layers[layers > 0].tolist()))


def confidence_quantiles(model, encoder_inputs, max_new_tokens: int) -> np.ndarray:
  """Candidate thresholds: quantiles of every exit's max-prob along the full model's greedy output."""
  static = greedy_reference(model, encoder_inputs,
                            DecodeConfig(exit_mode="static", max_new_tokens=max_new_tokens))
  tokens = np.asarray(static.tokens)
  prefix = np.concatenate([np.full((len(tokens), 1), model.config.bos_id), tokens[:, :-1]], axis=1)
  confidences = np.asarray(jax.nn.softmax(model(encoder_inputs, prefix), axis=-1).max(-1))  # [L,B,N]
  return np.quantile(confidences, np.linspace(0.05, 0.95, 19))


def spread_threshold(decode_fn, thresholds) -> float:
  """The threshold among `thresholds` whose exits (decode_fn(threshold).exit_layers) cover the most
  layers; decode_fn is compiled once with a traced threshold."""
  return max(thresholds, key=lambda t: distinct_exits(decode_fn(float(t)).exit_layers))


def replace(config: DecodeConfig, **changes) -> DecodeConfig:
  return dataclasses.replace(config, **changes)
