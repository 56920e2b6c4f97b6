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
from deed_jax.decoding.prompts import Prompt, make_prompt
from deed_jax.decoding.speculative import speculative_decode
from deed_jax.models import MultiExitEncoderDecoder


@functools.partial(jax.jit, static_argnames=("graphdef", "treedef", "config"))
def _generate(
  graphdef, treedef, leaves, encoder_inputs, threshold, prompt: Prompt, *, config: DecodeConfig
) -> DecodeOutput:
  params = jax.tree.unflatten(treedef, leaves)
  if config.exit_mode == "speculative":
    decode = speculative_decode
  else:
    decode = beam_decode if config.strategy == "beam" else greedy_decode
  return decode(nnx.merge(graphdef, params), encoder_inputs, config, threshold, prompt)


class Generate:
  """`generate` bound to one model and one `DecodeConfig`: the config is checked and the model split
  once, so each call only checks its inputs and runs (use it in loops: benchmarks, evaluation,
  threshold sweeps). `run(encoder_inputs, threshold=None, prompt=None)`; `run.lower(...)` gives the
  program that call compiles, for inspection (HLO text, cost analysis).

  `prompt`: each row's decoder prefix as Hugging Face's `decoder_input_ids`, the start token
  included (a list of B token-id sequences, lengths may differ, or an int array [B, P]); None: the
  start token alone. `DecodeOutput` holds only the new tokens after each row's prompt. Programs are
  compiled per input shape, and so per longest prompt length P."""

  def __init__(self, model: MultiExitEncoderDecoder, config: DecodeConfig):
    self.model = model
    self.config = config.resolve(model.config)
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    # The parameters travel as a flat list of arrays: flattening the nnx State (its Variables) on
    # every call cost ~1 ms in Python, as much as a short decode of a small model on a CPU.
    leaves, self.treedef = jax.tree.flatten(self.params)
    self.leaves = list(leaves)
    # The threshold travels as a traced value: key the compiled function on the rest of the config.
    self.static_config = dataclasses.replace(self.config, threshold=0.0)
    self._executables = {}  # input shapes -> compiled program

  def _arguments(self, encoder_inputs: dict, threshold, prompt) -> tuple:
    threshold = check_threshold(self.config.threshold if threshold is None else threshold)
    self.model.check_inputs(encoder_inputs)
    cfg, config = self.model.config, self.config
    prompt = make_prompt(
      prompt,
      batch=batch_size(encoder_inputs),
      vocab_size=cfg.vocab_size,
      max_new_tokens=config.max_new_tokens,
      max_target_length=cfg.max_target_length,
      bos_id=config.bos_id,
      pad_id=config.pad_id,
    )
    return self.graphdef, self.treedef, self.leaves, encoder_inputs, np.float32(threshold), prompt

  def __call__(self, encoder_inputs: dict, threshold=None, prompt=None) -> DecodeOutput:
    args = self._arguments(encoder_inputs, threshold, prompt)
    return self._executable(args)(*args[2:])

  def lower(self, encoder_inputs: dict, threshold=None, prompt=None) -> jax.stages.Lowered:
    args = self._arguments(encoder_inputs, threshold, prompt)
    return _generate.lower(*args, config=self.static_config)

  def _executable(self, args: tuple) -> jax.stages.Compiled:
    """The program for these input shapes, compiled once per instance. (Calling the jitted function
    hashes the model's graphdef, a static argument, on every call: about 1 ms for a small model,
    as much as a whole short decode takes on a CPU, and it would count as decoding time.)"""
    leaves, treedef = jax.tree.flatten((args[3], args[5]))  # encoder inputs, prompt
    key = (treedef, tuple((np.shape(x), np.result_type(x)) for x in leaves))
    if key not in self._executables:
      self._executables[key] = _generate.lower(*args, config=self.static_config).compile()
    return self._executables[key]


def make_generate(model: MultiExitEncoderDecoder, config: DecodeConfig) -> Generate:
  """Check `config` against the model and split the model once;
  -> run(encoder_inputs, threshold=None, prompt=None)."""
  return Generate(model, config)


def batch_size(encoder_inputs: dict) -> int:
  """The number of rows of (checked) encoder inputs."""
  return int(np.shape(next(iter(encoder_inputs.values())))[0])


def make_encode(model: MultiExitEncoderDecoder) -> Callable[[dict], tuple[jax.Array, jax.Array]]:
  """The encoder alone, jitted: fn(encoder_inputs) -> (states [B, S, D], mask [B, S]). Decoder-only
  latency is generate time minus this."""
  graphdef, params = nnx.split(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)  # flattened once, as `Generate` does
  encode = jax.jit(
    lambda leaves, inputs: nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)).encode(inputs)
  )
  return lambda encoder_inputs: encode(leaves, encoder_inputs)


def generate(
  model: MultiExitEncoderDecoder, encoder_inputs: dict, config: DecodeConfig, prompt=None
) -> DecodeOutput:
  """Decode a batch, each row after its `prompt` (see `Generate`; None: the start token alone).
  Everything a user can get wrong is checked here, before compiling."""
  return make_generate(model, config)(encoder_inputs, prompt=prompt)
