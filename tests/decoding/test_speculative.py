"""Speculative decoding is lossless: its tokens are static greedy decoding's (the naive reference's,
which recomputes the whole decoder at every step), for models whose draft exit agrees with the full
model often and rarely, at batch 1 and 3, every backfill chunk, draft lengths that do not divide
max_new_tokens, rows ending mid-draft, prompts and generation constraints.

Each precondition is checked on the data, not assumed: the agreement of the draft exit with the full
model (counted on the reference's own features), rows ending at different steps, and a top-1 margin of
the full model along the decode far above float error (so a block computed as one call and a position
computed alone cannot pick different tokens)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import generate, make_generate
from deed_jax.decoding.reference import greedy_reference
from deed_jax.errors import UserError
from tests.conftest import random_inputs
from tests.decoding.helpers import spread_model

STEPS = 9  # not a multiple of any max_draft below
LAYERS = 4
MARGIN = 1e-4  # the full model's top-1 lead over its top-2 (log-probability) along every decode


def _static(model, inputs, eos_id, prompt=None, **constraints):
  config = DecodeConfig(exit_mode="static", max_new_tokens=STEPS, eos_id=eos_id, **constraints)
  return greedy_reference(model, inputs, config, prompt=prompt)


def _exit_argmax(model, inputs, tokens, layers):
  """Along the static decode (teacher-forced), each exit's argmax and the last exit's top-1 margin:
  -> ({layer: [B, N] argmax}, [B, N] margin)."""
  prefix = np.concatenate(
    [np.full((len(tokens), 1), model.config.bos_id), np.asarray(tokens)[:, :-1]], axis=1
  )
  log_probs = jax.nn.log_softmax(model.logits(model.exit_features(inputs, prefix)), axis=-1)
  top2 = np.asarray(jax.lax.top_k(log_probs[-1], 2)[0])  # [B, N, 2]
  argmax = {j: np.asarray(log_probs[j - 1].argmax(-1)) for j in layers}
  return argmax, top2[..., 0] - top2[..., 1]


def _agreement(model, inputs, static, draft_layer) -> float:
  """How often the draft exit's argmax equals the full model's along the static decode (its tokens up
  to each row's EOS), from the naive full pass; also checks the full model's margin there."""
  tokens = np.asarray(static.tokens)
  argmax, margin = _exit_argmax(model, inputs, tokens, (draft_layer, LAYERS))
  emitted = np.asarray(static.exit_layers) > 0
  assert np.array_equal(
    argmax[LAYERS][emitted], tokens[emitted]
  )  # the reference agrees with itself
  assert margin[emitted].min() > MARGIN, "precondition: no near-tie of the full model"
  return float((argmax[draft_layer] == argmax[LAYERS])[emitted].mean())


def _varied_model(seed: int, position_scale: float):
  """A random model whose generations vary along the sequence: its learned position embeddings,
  scaled up, make the next token depend on the position (plain random models repeat one token)."""
  model = spread_model("text", seed, decoder_layers=LAYERS, vocab_size=37)
  table = model.decoder.positions.table
  table[...] = table[...] * position_scale
  return model


def _agreeing(model, draft_layer: int, scale: float):
  """The layers above `draft_layer` barely change the residual stream (their attention and MLP outputs
  scaled by `scale`), and the last exit's adapter is the draft exit's: the draft exit predicts
  nearly what the full model does. -> the model, changed in place."""
  for layer in list(model.decoder.layers)[draft_layer:]:
    for module, names in (
      (layer.self_attention, ("o", "o_bias")),
      (layer.cross_attention, ("o", "o_bias")),
      (layer.mlp, ("wo", "wo_bias")),
    ):
      for name in names:
        if hasattr(module, name):
          getattr(module, name)[...] = getattr(module, name)[...] * scale
  adapters = model.decoder.adapters
  nnx.update(adapters[LAYERS - 1], nnx.state(adapters[draft_layer - 1], nnx.Param))
  return model


def _mid_sequence_eos(tokens: np.ndarray) -> int | None:
  """An id the model emits, first at different steps in different rows (or not at all in some), and
  after step 2 in at least one: as EOS, rows end at different steps, some of them mid-draft."""
  for token in np.unique(tokens):
    hits = tokens == token
    first = np.where(hits.any(1), hits.argmax(1), tokens.shape[1])
    if len(set(first.tolist())) > 1 and (first[first < tokens.shape[1]] >= 2).any():
      return int(token)
  return None


def _case(model, inputs, draft_layer: int):
  """(model, draft layer, EOS id, agreement) when the model's decode suits the tests, else None."""
  never = (
    model.config.vocab_size - 1
  )  # as EOS: the model's decode without one, if it never emits it
  tokens = np.asarray(_static(model, inputs, never).tokens)
  if (tokens == never).any() or min(len(set(row)) for row in tokens.tolist()) < 2:
    return None
  eos = _mid_sequence_eos(tokens)
  if eos is None:
    return None
  return (
    model,
    draft_layer,
    eos,
    _agreement(model, inputs, _static(model, inputs, eos), draft_layer),
  )


# (model seed, position scale, scale of the layers above the draft exit): candidates for a draft exit
# that agrees often, in order; the first that does 75-99% of the time is used.
AGREEING = ((0, 6.0, 0.1), (2, 3.0, 0.1), (2, 6.0, 0.3), (0, 3.0, 0.1))


def _models():
  """{"high": case, "low": case} and the inputs, each case a draft exit whose agreement with the
  full model is measured on the data: 75-99% (drafts mostly accepted, some rejected), <= 50%."""
  inputs = random_inputs(spread_model("text", 0).config, batch=3, seed=1)[0]
  cases = {}
  for seed, position_scale, scale in AGREEING:
    case = _case(_agreeing(_varied_model(seed, position_scale), 2, scale), inputs, 2)
    if case is not None and 0.75 <= case[3] < 1.0:
      cases["high"] = case
      break
  for seed, position_scale, _ in AGREEING:
    case = _case(_varied_model(seed, position_scale), inputs, 1)
    if case is not None and case[3] <= 0.5:
      cases["low"] = case
      break
  assert set(cases) == {"high", "low"}, f"no candidate model for { ({'high', 'low'} - set(cases)) }"
  return inputs, cases


@pytest.fixture(scope="module")
def models():
  return _models()


def _rows(inputs, b):
  return jax.tree.map(lambda x: x[b : b + 1], inputs)


@pytest.mark.parametrize(
  "agreement, max_draft, chunk",
  [
    ("high", 2, 16),
    ("high", 4, 1),
    pytest.param("high", 5, 2, marks=pytest.mark.slow),
    ("low", 2, 2),
    ("low", 4, 16),
  ],
)
def test_speculative_tokens_are_static_greedy_tokens(models, agreement, max_draft, chunk):
  inputs, cases = models
  model, draft_layer, eos, _ = cases[agreement]
  expected = _static(model, inputs, eos)
  ends = (np.asarray(expected.tokens) == eos).argmax(1)
  assert len(set(ends.tolist())) > 1, "precondition: rows end at different steps"
  config = DecodeConfig(
    exit_mode="speculative",
    draft_exit_layer=draft_layer,
    max_draft=max_draft,
    threshold=0.0,
    max_new_tokens=STEPS,
    eos_id=eos,
    backfill_chunk=chunk,
  )
  run = make_generate(model, config)
  out = run(inputs)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  static_scores = generate(model, inputs, DecodeConfig(exit_mode="static", **_same(config))).scores
  np.testing.assert_allclose(np.asarray(out.scores), np.asarray(static_scores), rtol=1e-4)
  layers = np.asarray(out.exit_layers)
  emitted = np.asarray(expected.exit_layers) > 0
  assert set(layers[emitted].tolist()) <= {draft_layer, LAYERS} and (layers[~emitted] == 0).all()
  stats = out.speculation
  assert (np.asarray(stats.matched) <= np.asarray(stats.drafted)).all()
  assert (np.asarray(stats.drafted) > 0).all()
  eos_mid_round = []
  for b in range(3):  # alone: the same tokens; every emitted draft is a matched one
    alone = run(_rows(inputs, b))
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(expected.tokens)[b])
    from_drafts = int((np.asarray(alone.exit_layers) == draft_layer).sum())
    assert from_drafts <= int(alone.speculation.matched[0])
    # Each round emits the full model's token unless the row ends within its accepted drafts.
    full = int((np.asarray(alone.exit_layers) == LAYERS).sum())
    assert full <= int(alone.speculation.rounds) <= full + 1
    # A round's layer count sits at its first token: an EOS elsewhere ended the row mid-round.
    ends = np.flatnonzero(np.asarray(alone.tokens)[0] == eos)
    eos_mid_round += [np.asarray(alone.layers_run)[ends[0]] == 0] if ends.size else []
  if agreement == "high":
    assert any(eos_mid_round), "precondition: a row ends inside a drafted block"


def _same(config: DecodeConfig) -> dict:
  return {"max_new_tokens": config.max_new_tokens, "eos_id": config.eos_id}


def test_acceptance_follows_the_draft_exits_agreement(models):
  """Rounds and acceptance: the agreeing model accepts most drafts and needs few rounds; the other
  accepts few. (Both emit the static tokens, tested above.)"""
  inputs, cases = models
  rates = {}
  for name, (model, draft_layer, _, _) in cases.items():
    config = DecodeConfig(
      exit_mode="speculative", draft_exit_layer=draft_layer, max_draft=4, threshold=0.0,
      max_new_tokens=STEPS, eos_id=model.config.vocab_size - 1,
    )  # fmt: skip
    out = generate(model, inputs, config)
    stats = out.speculation
    rates[name] = float(np.sum(stats.matched) / np.sum(stats.drafted))
    if name == "high":
      assert int(stats.rounds) < STEPS  # several tokens per round
  assert rates["high"] > rates["low"] + 0.2, rates


def test_a_threshold_stops_drafting_early_and_changes_no_token(models):
  inputs, cases = models
  model, draft_layer, eos, _ = cases["low"]
  config = DecodeConfig(
    exit_mode="speculative", draft_exit_layer=draft_layer, max_draft=4, max_new_tokens=STEPS,
    eos_id=eos,
  )  # fmt: skip
  run = make_generate(model, config)
  always = run(inputs, threshold=0.0)
  # A threshold that half the drafts miss (from the drafts' own confidences).
  median = float(np.median(np.asarray(always.confidences)[np.asarray(always.exit_layers) > 0]))
  expected = np.asarray(_static(model, inputs, eos).tokens)
  outs = {t: run(inputs, threshold=t) for t in (0.0, median, 1.01)}
  for out in outs.values():
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
  drafted = {t: int(np.sum(out.speculation.drafted)) for t, out in outs.items()}
  assert drafted[0.0] > drafted[median] > drafted[1.01] > 0, drafted
  # Above 1 no draft is confident: each round drafts one token.
  never = outs[1.01].speculation
  assert np.asarray(never.drafted).max() <= int(never.rounds)


def test_speculative_with_ragged_prompts_and_constraints_equals_static(models):
  inputs, cases = models
  model, draft_layer, eos, _ = cases["high"]
  rng = np.random.default_rng(0)
  bos, vocab = model.config.bos_id, model.config.vocab_size
  prompts = [[bos] + rng.integers(3, vocab, n - 1).tolist() for n in (1, 2, 2)]
  constraints = {"no_repeat_ngram_size": 2, "bad_words_ids": ((5,), (7, 8))}
  for extra in ({}, constraints):
    expected = np.asarray(_static(model, inputs, eos, prompts, **extra).tokens)
    config = DecodeConfig(
      exit_mode="speculative", draft_exit_layer=draft_layer, max_draft=3, threshold=0.0,
      max_new_tokens=STEPS, eos_id=eos, **extra,
    )  # fmt: skip
    out = generate(model, inputs, config, prompt=prompts)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"strategy": "beam", "num_beams": 2}, "greedy only"),
    ({"draft_exit_layer": None}, "needs draft_exit_layer"),
    ({"max_draft": 0}, "max_draft=0"),
    ({"draft_exit_layer": LAYERS}, "draft_exit_layer=4 is outside 1..3"),
    ({"draft_exit_layer": 0}, "draft_exit_layer=0 is outside 1..3"),
  ],
)
def test_bad_speculative_configs_are_refused_before_compiling(changes, message):
  model = spread_model("text", 0, decoder_layers=LAYERS)
  options = {"exit_mode": "speculative", "draft_exit_layer": 2, "max_new_tokens": STEPS, **changes}
  with pytest.raises(UserError, match=message):
    make_generate(model, DecodeConfig(**options))
