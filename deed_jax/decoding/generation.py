"""`generate`: the public decoding entry point, jitted once per (model structure, config).

The model is split once (`nnx.split`) and the jitted function takes its arrays, the encoder inputs and
the threshold as traced arguments: new thresholds, batch contents or weights never recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from deed_jax.decoding.beam import beam_decode
from deed_jax.decoding.config import DecodeConfig, check_threshold
from deed_jax.decoding.greedy import greedy_decode
from deed_jax.decoding.output import DecodeOutput
from deed_jax.models import MultiExitEncoderDecoder


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _generate(graphdef, params, encoder_inputs, threshold, *, config: DecodeConfig) -> DecodeOutput:
  decode = beam_decode if config.strategy == "beam" else greedy_decode
  return decode(nnx.merge(graphdef, params), encoder_inputs, config, threshold)


class Generate:
  """`generate` bound to one model and one `DecodeConfig`: the config is checked and the model split
  once, so each call only checks its inputs and runs (use it in loops: benchmarks, evaluation,
  threshold sweeps). `run(encoder_inputs, threshold=None)`; `run.lower(...)` gives the program that
  call compiles, for inspection (HLO text, cost analysis)."""

  def __init__(self, model: MultiExitEncoderDecoder, config: DecodeConfig):
    self.model = model
    self.config = config.resolve(model.config)
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    # The threshold travels as a traced value: key the compiled function on the rest of the config.
    self.static_config = dataclasses.replace(self.config, threshold=0.0)
    self._executables = {}  # input shapes -> compiled program

  def _arguments(self, encoder_inputs: dict, threshold) -> tuple:
    threshold = check_threshold(self.config.threshold if threshold is None else threshold)
    self.model.check_inputs(encoder_inputs)
    return self.graphdef, self.params, encoder_inputs, np.float32(threshold)

  def __call__(self, encoder_inputs: dict, threshold=None) -> DecodeOutput:
    args = self._arguments(encoder_inputs, threshold)
    return self._executable(args)(*args[1:])

  def lower(self, encoder_inputs: dict, threshold=None) -> jax.stages.Lowered:
    return _generate.lower(*self._arguments(encoder_inputs, threshold), config=self.static_config)

  def _executable(self, args: tuple) -> jax.stages.Compiled:
    """The program for these input shapes, compiled once per instance. (Calling the jitted function
    hashes the model's graphdef, a static argument, on every call: about 1 ms for a small model,
    as much as a whole short decode takes on a CPU, and it would count as decoding time.)"""
    leaves, treedef = jax.tree.flatten(args[2])
    key = (treedef, tuple((np.shape(x), np.result_type(x)) for x in leaves))
    if key not in self._executables:
      self._executables[key] = _generate.lower(*args, config=self.static_config).compile()
    return self._executables[key]


def make_generate(model: MultiExitEncoderDecoder, config: DecodeConfig) -> Generate:
  """Check `config` against the model and split the model once;
  -> run(encoder_inputs, threshold=None)."""
  return Generate(model, config)


def make_encode(model: MultiExitEncoderDecoder) -> Callable[[dict], tuple[jax.Array, jax.Array]]:
  """The encoder alone, jitted: fn(encoder_inputs) -> (states [B, S, D], mask [B, S]). Decoder-only
  latency is generate time minus this."""
  graphdef, params = nnx.split(model, nnx.Param)
  encode = jax.jit(lambda params, inputs: nnx.merge(graphdef, params).encode(inputs))
  return lambda encoder_inputs: encode(params, encoder_inputs)


def generate(
  model: MultiExitEncoderDecoder, encoder_inputs: dict, config: DecodeConfig
) -> DecodeOutput:
  """Decode a batch. Everything a user can get wrong is checked here, before compiling."""
  return make_generate(model, config)(encoder_inputs)
