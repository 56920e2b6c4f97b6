"""`generate`: the public decoding entry point, jitted once per (model structure, config).

The model is split once (`nnx.split`) and the jitted function takes its arrays, the encoder inputs and
the threshold as traced arguments: new thresholds, batch contents or weights never recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.decoding.config import DecodeConfig, check_threshold
from deed_jax.decoding.beam import beam_decode
from deed_jax.decoding.greedy import greedy_decode
from deed_jax.decoding.output import DecodeOutput
from deed_jax.models import MultiExitEncoderDecoder


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _generate(graphdef, params, encoder_inputs, threshold, *, config: DecodeConfig) -> DecodeOutput:
  decode = beam_decode if config.strategy == "beam" else greedy_decode
  return decode(nnx.merge(graphdef, params), encoder_inputs, config, threshold)


def make_generate(model: MultiExitEncoderDecoder, config: DecodeConfig
                  ) -> Callable[..., DecodeOutput]:
  """Check `config` against the model and split the model once; -> fn(encoder_inputs, threshold=None).

  Use it in loops (benchmarks, evaluation): each call then only checks the inputs and runs.
  """
  config = config.resolve(model.config)
  graphdef, params = nnx.split(model, nnx.Param)
  # The threshold travels as a traced value: key the compiled function on the rest of the config.
  static = dataclasses.replace(config, threshold=0.0)

  def run(encoder_inputs: dict, threshold: float | None = None) -> DecodeOutput:
    threshold = config.threshold if threshold is None else threshold
    check_threshold(threshold)
    model.check_inputs(encoder_inputs)
    return _generate(graphdef, params, encoder_inputs, jnp.float32(threshold), config=static)

  return run


def make_encode(model: MultiExitEncoderDecoder) -> Callable[[dict], tuple[jax.Array, jax.Array]]:
  """The encoder alone, jitted: fn(encoder_inputs) -> (states [B, S, D], mask [B, S]). Decoder-only
  latency is generate time minus this."""
  graphdef, params = nnx.split(model, nnx.Param)
  encode = jax.jit(lambda params, inputs: nnx.merge(graphdef, params).encode(inputs))
  return lambda encoder_inputs: encode(params, encoder_inputs)


def generate(model: MultiExitEncoderDecoder, encoder_inputs: dict, config: DecodeConfig) -> DecodeOutput:
  """Decode a batch. Everything a user can get wrong is checked here, before compiling."""
  return make_generate(model, config)(encoder_inputs)
