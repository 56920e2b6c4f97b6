"""The compiled DEED decode: no KV-cache-sized copies inside its loops."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from deed_jax.decoding import make_generate
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import DecodeStep
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, tiny_config


def loop_copies(hlo_text: str, shapes: tuple[str, ...]) -> dict[str, list[str]]:
  """`copy` instructions of any of `shapes` (e.g. "f32[2,4,21,8]") outside the entry computation, by
  where they run: "step" (the body of a while loop called from the entry: once per token) or "inner"
  (nested loops and cond branches: per layer or per chunk)."""
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  step_bodies = set(re.findall(r"while\(.*?body=%?([\w.\-]+)", entry[: entry.index("\n}")]))
  found, computation = {"step": [], "inner": []}, None
  for line in hlo_text.splitlines():
    if not line.startswith(" ") and line.rstrip().endswith("{"):
      computation = None if line.startswith("ENTRY") else line.split()[0].lstrip("%")
    if computation and " copy(" in line and any(f"= {s}" in line for s in shapes):
      found["step" if computation in step_bodies else "inner"].append(line.strip())
  return found


def _cache_loop(threshold, cache):
  """Each layer's cache threaded through a `lax.cond` whose pass-through is branch 1 (XLA's fix for
  pass-through branches, openxla/xla#46314, covers branch 0 only): XLA copies the cache there."""

  def step(carry):
    i, caches = carry
    new = []
    for layer, c in enumerate(caches):
      write = lambda c, layer=layer: jax.lax.dynamic_update_slice_in_dim(
        c, jnp.full(c.shape[:2] + (1,) + c.shape[3:], i + layer, c.dtype), i, axis=2
      )
      new.append(jax.lax.cond(threshold <= layer, lambda c: c, write, c))
    return i + 1, tuple(new)

  return jax.lax.while_loop(lambda c: c[0] < 8, step, (0, (cache,) * 4))


def test_the_check_finds_a_cache_threaded_through_cond():
  cache = jnp.zeros((2, 4, 21, 8))
  text = jax.jit(_cache_loop).lower(jnp.float32(2.0), cache).compile().as_text()
  copies = loop_copies(text, ("f32[2,4,21,8]",))
  assert copies["step"] or copies["inner"]


@pytest.mark.parametrize("batch", [1, 2])
def test_deed_decode_does_not_copy_the_cache_per_layer(batch):
  # d_model 64 and the state confidence: at these, reading a layer's input back from the frontier
  # made XLA:CPU copy the frontier in every layer's loop (tiny widths with max_prob did not show it).
  config = tiny_config(
    decoder_layers=4, vocab_size=11, max_target_length=20, num_heads=4, d_model=64
  )
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  encoder_inputs, _ = random_inputs(config, batch=batch, seed=0)
  for decode, rows in (
    (DecodeConfig(max_new_tokens=17, backfill_chunk=4), batch),
    (DecodeConfig(max_new_tokens=17, backfill_chunk=4, confidence="state"), batch),
    (DecodeConfig(max_new_tokens=17, backfill_chunk=4, exit_mode="copy"), batch),
    (DecodeConfig(max_new_tokens=17, backfill_chunk=4, strategy="beam", num_beams=3), 3 * batch),
  ):
    text = make_generate(model, decode).lower(encoder_inputs, 0.5).compile().as_text()
    length = 17 + (4 if decode.exit_mode == "deed" else 1)
    cache = f"f32[{rows},4,{length},{config.resolved_head_dim}]"
    frontier = f"f32[{rows},{length},{config.d_model}]"
    assert re.search(re.escape(cache), text)  # The shapes we look for are the real ones.
    copies = loop_copies(text, (cache, frontier))
    assert copies["inner"] == []  # Never per layer or per chunk.
    if (
      decode.strategy == "beam"
    ):  # Reordering beams moves each cache and the frontier once per step.
      assert len(copies["step"]) <= 2 * config.decoder_layers + 1
    else:
      assert copies["step"] == []


@pytest.fixture
def predicate_count(monkeypatch):
  """Counts the control-flow predicates a step evaluates: every `while_loop` condition check and
  every `cond`, run eagerly (under `jax.disable_jit`, JAX evaluates both in Python, so the count is
  what the compiled loops and branches evaluate on the device). -> [count]."""
  count = [0]
  real_while, real_cond = jax.lax.while_loop, jax.lax.cond

  def while_loop(cond_fun, body_fun, init_val):
    def counted(value):
      count[0] += 1
      return cond_fun(value)

    return real_while(counted, body_fun, init_val)

  def cond(pred, *args, **kwargs):
    count[0] += 1
    return real_cond(pred, *args, **kwargs)

  monkeypatch.setattr(jax.lax, "while_loop", while_loop)
  monkeypatch.setattr(jax.lax, "cond", cond)
  return count


def _step_predicates(model, decode: DecodeConfig, thresholds, count) -> list[tuple[int, int]]:
  """Runs one batch-2 decode step per threshold (positions 0, 1, ...) eagerly. -> per step
  (predicates evaluated, layers run)."""
  config = decode.resolve(model.config)
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=0)
  results = []
  with jax.disable_jit():
    encoder_out, encoder_mask = model.encode(encoder_inputs)
    state, token, live = None, jnp.full((2,), config.bos_id, jnp.int32), jnp.ones((2,), bool)
    for p, threshold in enumerate(thresholds):
      step = DecodeStep(model, encoder_out, encoder_mask, config, jnp.float32(threshold))
      state = step.init_state() if state is None else state
      before = count[0]
      state, choice, work = step(state, jnp.int32(p), token, live)
      results.append((count[0] - before, int(work.layers_run)))
      token = choice.token
  return results


def test_a_one_position_step_evaluates_few_predicates_per_layer(predicate_count):
  """A step whose layers have nothing deferred (the usual step) evaluates at most two predicates per
  layer it runs: the run-once loop entering the next layer (its entry and its exit), and, for deed,
  the one loop that would enter the backfilling layers; a backfilling step evaluates more (the
  control: the count sees the block loops)."""
  config = tiny_config(decoder_layers=4, vocab_size=11, max_target_length=20, num_heads=4)
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  layers = config.decoder_layers
  full = _step_predicates(
    model, DecodeConfig(max_new_tokens=8, exit_mode="static"), [2.0] * 3, predicate_count
  )
  assert all(run == layers and count <= 2 * layers - 1 for count, run in full), full
  deed = _step_predicates(
    model, DecodeConfig(max_new_tokens=8, backfill_chunk=4), [2.0, 0.0, 0.0, 2.0], predicate_count
  )
  (all_layers, run0), (shallow, run1), _, (backfill, run3) = deed
  assert (run0, run1, run3) == (layers, 1, layers)
  assert all_layers <= 2 * layers  # one-position step through every layer: <= 2 per layer
  assert shallow <= 2  # exit at layer 1: the loop not entered, and the backfill check
  assert backfill > all_layers  # layers 2..4 had positions 1, 2 deferred: the block loops ran
