"""What the machine charges for the decoder's pieces: a block of m positions through every decoder
layer, and the LM head, timed in isolation (batch 1). The speed-up bounds of `bench.decode` and
`bench.speculative` are computed in these units."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deed_jax.bench.model import inputs_for
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
