"""What the machine charges for the decoder's pieces. `block_costs` and `head_cost`: a block of m
positions through every decoder layer, and the LM head, timed in isolation (batch 1; `bench.decode`'s
bounds are in these units). `step_costs`: a decoding step, a draft step and a speculative
verification, timed inside decoding programs (`bench.speculative`'s bounds)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deed_jax.bench.model import inputs_for
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import DecodeStep
from deed_jax.decoding.generation import make_encode
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.timing import median_seconds, timed


def block_costs(
  model: MultiExitEncoderDecoder,
  widths: list[int],
  repeats: int,
  calls: int = 16,
  encoder_inputs: dict | None = None,
) -> list[dict]:
  """Median time of the decoder's layers over one block of m positions (batch 1, written into the
  KV cache like a deed backfill), `calls` blocks per timing, relative to m = 1; cross-attending to
  `encoder_inputs` (one row; default: random text)."""
  config = model.config
  graphdef, params = nnx.split(model, nnx.Param)
  inputs = inputs_for(config, 1) if encoder_inputs is None else encoder_inputs
  encoded = make_encode(model)(inputs)  # [1, S, D], [1, S]: not timed
  cache_length = max(widths) * calls

  def run_blocks(params, encoded, width: int):
    decoder = nnx.merge(graphdef, params).decoder
    memory = decoder.cross_memory(*encoded)
    caches = decoder.init_cache(1, cache_length)  # L x (k, v) [1, H, T, Dh]

    def block(i, carry):  # Every layer over positions [i * width, (i + 1) * width).
      x, caches = carry  # [1, W, D]
      caches = list(caches)
      for j in range(config.decoder_layers):
        x, caches[j] = decoder.run_block(j, x, i * width, caches[j], memory)
      return x, tuple(caches)

    x = jnp.ones((1, width, config.d_model), jnp.dtype(config.dtype))
    return jax.lax.fori_loop(0, calls, block, (x, caches))[0]

  runs = {w: jax.jit(run_blocks, static_argnums=2) for w in widths}
  for w, run in runs.items():
    timed(run, params, encoded, w)  # Compile, warm up.
  seconds = {w: [] for w in widths}
  for _ in range(repeats):
    for w, run in runs.items():
      seconds[w].append(timed(run, params, encoded, w)[1])
  one = np.asarray(seconds[widths[0]])
  return [
    {
      "positions": w,
      "ms_per_block": 1000 * float(np.median(seconds[w])) / calls,
      "relative_to_one": float(np.median(np.asarray(seconds[w]) / one)),
    }
    for w in widths
  ]


def head_cost(
  model: MultiExitEncoderDecoder, layer_ms: float, repeats: int, calls: int = 64
) -> dict:
  """The LM head and log-softmax over the vocabulary on one position (batch 1), relative to one
  decoder layer on one position (`layer_ms`, from the block costs)."""
  graphdef, params = nnx.split(model, nnx.Param)

  def run_heads(params):
    model = nnx.merge(graphdef, params)
    body = lambda i, h: h + jax.nn.log_softmax(model.logits(h))[:, : model.config.d_model] * 1e-6
    return jax.lax.fori_loop(0, calls, body, jnp.ones((1, model.config.d_model), jnp.float32))

  ms = 1000 * median_seconds(jax.jit(run_heads), params, repeats=repeats) / calls
  return {"ms": ms, "layer_ms": layer_ms, "in_layers": ms / layer_ms}


def step_costs(
  model: MultiExitEncoderDecoder,
  encoder_inputs: dict,
  drafts: list[tuple[int, int]],
  max_new_tokens: int,
  repeats: int,
  calls: int = 32,
) -> dict:
  """What speculative decoding's pieces cost inside a decoding program, in ms per call at the batch of
  `encoder_inputs`: a static step (every layer and the head on one position), a draft step per draft
  exit d (layers 1..d and the head) and a verification per (d, k) in `drafts` (layers 1..d on the
  last draft's slot, d+1..L on a block of k + 1 slots, the head on all of them), with caches sized as
  in the decoding they model (`max_new_tokens`, and k + 1 slots of slack).

  Each is `calls` calls of the real `DecodeStep` in a `fori_loop`, each fed the previous call's token,
  less a program that only encodes. Unlike `block_costs`, these are the kernels decoding runs: XLA
  picks kernels per program, and on XLA:CPU a one-position layer in a bare chain of blocks cost ~1.5x
  what it costs in a decoding step, which made blocks look cheap relative to one position."""
  config = model.config
  layers = config.decoder_layers
  graphdef, params = nnx.split(model, nnx.Param)

  def program(kind: str, d: int = 1, k: int = 1, count: int = calls):
    """kind: static, draft or verify; jitted fn(params, encoder_inputs) -> the last tokens."""
    exit_mode, extra = "static", {}
    if kind != "static":
      exit_mode, extra = "speculative", {"draft_exit_layer": d, "max_draft": k}
    decode = DecodeConfig(
      exit_mode=exit_mode, threshold=0.0, max_new_tokens=max_new_tokens, **extra
    )
    decode = decode.resolve(config)

    def run(params, inputs):
      model = nnx.merge(graphdef, params)
      encoded, mask = model.encode(inputs)  # [B, S, D], [B, S]
      step = DecodeStep(model, encoded, mask, decode, 0.0)
      rows = encoded.shape[0]
      live, slot = jnp.ones((rows,), bool), jnp.int32(0)
      # What a verification finds: layers 1..d filled up to the last draft's slot k, the rest empty.
      verify_fill = jnp.where(jnp.arange(layers) < d, k, 0).astype(jnp.int32)

      def body(_, carry):  # Always from slot 0, fill pointers reset: every call does the same work.
        state, token = carry  # token [B]
        if kind == "verify":
          state, verified, _ = step.verify(
            state._replace(fill=verify_fill), slot, slot + k + 1, token
          )
          return state, verified.token[:, 0]
        state, choice, _ = step(state._replace(fill=jnp.zeros_like(state.fill)), slot, token, live)
        return state, choice.token

      start = (step.init_state(), jnp.zeros((rows,), jnp.int32))
      return jax.lax.fori_loop(0, count, body, start)[1]

    return jax.jit(run)

  programs = {"encoder": program("static", count=0), "static": program("static")}
  for d in sorted({d for d, _ in drafts}):  # A draft step's caches as with the longest drafts at d.
    programs[f"draft {d}"] = program("draft", d, max(k for e, k in drafts if e == d))
  for d, k in drafts:
    programs[f"verify {d}:{k}"] = program("verify", d, k)
  for run in programs.values():
    timed(run, params, encoder_inputs)  # Compile, warm up.
  seconds = {name: [] for name in programs}
  for _ in range(repeats):  # Interleaved, so a slow spell of the machine hits them alike.
    for name, run in programs.items():
      seconds[name].append(timed(run, params, encoder_inputs)[1])
  encoder = float(np.median(seconds.pop("encoder")))
  return {
    name: 1000 * max(float(np.median(s)) - encoder, 0.0) / calls for name, s in seconds.items()
  }
