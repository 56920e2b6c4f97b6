"""`generate`: the public decoding entry point, jitted once per (model structure, config).

The model is split once (`nnx.split`) and the jitted function takes its arrays, the encoder inputs and
the threshold as traced arguments: new thresholds, batch contents or weights never recompile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.decoding.config import DecodeConfig, check_threshold
from deed_jax.decoding.greedy import GreedyOutput, greedy_decode
from deed_jax.models import MultiExitEncoderDecoder

DecodeOutput = GreedyOutput


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _generate(graphdef, params, encoder_inputs, threshold, *, config: DecodeConfig) -> DecodeOutput:
  return greedy_decode(nnx.merge(graphdef, params), encoder_inputs, config, threshold)


def generate(model: MultiExitEncoderDecoder, encoder_inputs: dict, config: DecodeConfig) -> DecodeOutput:
  """Decode a batch. Everything a user can get wrong is checked here, before compiling."""
  if config.strategy != "greedy" or config.exit_mode == "copy":
    raise NotImplementedError(
        f"strategy={config.strategy!r} exit_mode={config.exit_mode!r} is not implemented yet; greedy "
        "decoding supports exit_mode deed, oracle, static and fixed.")
  config = config.resolve(model.config)
  check_threshold(config.threshold)
  model.check_inputs(encoder_inputs)
  graphdef, params = nnx.split(model, nnx.Param)
  threshold = jnp.float32(config.threshold)
  # The threshold travels as a traced value: key the compiled function on the rest of the config.
  static = config.__class__(**{**config.__dict__, "threshold": 0.0})
  return _generate(graphdef, params, encoder_inputs, threshold, config=static)
