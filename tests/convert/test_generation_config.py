"""A converted model decodes as `hf_model.generate(inputs)` does with the checkpoint's own generation
settings: `generate(model, x, workdir_decode_config(workdir, exit_mode="static"))` against HF reading
the same generation_config.json (or, for older checkpoints, config.json's generation keys).

Each setting is chosen from the model's own plain outputs so that it changes them (it bites by
construction: a min length above a row's natural length, a forced first token some row would not
choose, a bad word a row would write), among candidates whose HF decisions are far from ties (jittered
scores give the same tokens), so that float differences between PyTorch and XLA cannot flip one."""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest
import transformers as T

from deed_jax import checkpoint
from deed_jax.convert import hf_to_orbax
from deed_jax.convert.parity import hf_generate, pad_to
from deed_jax.decoding import generate, hf_settings
from deed_jax.errors import UserError
from deed_jax.workdir import (
  DECODE_CONFIG_FILE,
  GENERATION_CONFIG_FILE,
  workdir_decode_config,
  write_json,
)
from tests.convert import hf_models

N = hf_models.PARITY_MAX_NEW_TOKENS  # every case's settings allow at most N new tokens


def _rows(inputs: dict, prompts) -> list[tuple[dict, list | None]]:
  """HF calls: the whole batch, or one row at a time with its prompt (HF pads ragged prompts)."""
  if prompts is None:
    return [(inputs, None)]
  return [({k: v[b : b + 1] for k, v in inputs.items()}, [p]) for b, p in enumerate(prompts)]


def _hf_tokens(hf_model, inputs, prompts=None, *, plain=False, jitter=None) -> np.ndarray:
  """HF's tokens [B, N] with its own generation config (`plain`: every setting off, greedy)."""
  text = hf_model.config.get_text_config(decoder=True)
  eos, pad = hf_model.config.eos_token_id, text.pad_token_id
  search = {} if jitter is None else dict(logits_processor=[hf_models.Jitter(jitter)])
  if plain:
    search.update(num_beams=1)
  limit = N if plain else None
  rows = [
    hf_generate(hf_model, x, limit, eos_id=eos, pad_id=pad, prompt=p, plain=plain, **search)[0]
    for x, p in _rows(inputs, prompts)
  ]
  return np.concatenate([pad_to(r, N, pad) for r in rows])


def _stable_hf_tokens(hf_model, inputs, prompts=None) -> np.ndarray | None:
  """HF's tokens with its generation config, or None when jittered scores change any (a near-tie)."""
  tokens = _hf_tokens(hf_model, inputs, prompts)
  for seed in range(3):
    if not np.array_equal(_hf_tokens(hf_model, inputs, prompts, jitter=seed), tokens):
      return None
  return tokens


def _first_stable(c, inputs, candidates, prompts=None) -> tuple[dict, np.ndarray]:
  """The first candidate generation settings whose HF decisions are far from ties, and HF's tokens."""
  for settings in candidates:
    hf_model = copy.deepcopy(c.hf_model)
    hf_model.generation_config.update(**settings)
    tokens = _stable_hf_tokens(hf_model, inputs, prompts)
    if tokens is not None:
      return settings, tokens
  raise AssertionError(f"every candidate has a near-tie: {candidates}")


def _checkpoint_with(c, root, settings: dict, legacy: bool = False):
  """c's HF checkpoint with `settings` in its generation_config.json (`legacy`: in config.json, the
  generation_config.json removed), reloaded by HF and converted. -> (HF model, workdir, our model)."""
  hf_dir = root / "hf"
  shutil.copytree(c.hf_dir, hf_dir)
  target = hf_dir / ("config.json" if legacy else GENERATION_CONFIG_FILE)
  values = {**json.loads(target.read_text()), **settings}
  target.write_text(json.dumps(values))
  if legacy:
    (hf_dir / GENERATION_CONFIG_FILE).unlink()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # HF on generation keys in config.json
    hf_model = type(c.hf_model).from_pretrained(hf_dir).eval()
  workdir = str(root / "orbax")
  hf_to_orbax(str(hf_dir), workdir)
  return hf_model, workdir, checkpoint.load_model(workdir)


def _ours(model, workdir, inputs, prompts=None, prompt_length=1) -> np.ndarray:
  config = workdir_decode_config(workdir, prompt_length, exit_mode="static")
  out = generate(model, hf_models.to_ours(inputs), config, prompt=prompts)
  return pad_to(np.asarray(out.tokens), N, model.config.pad_id)


def _lengths(tokens: np.ndarray, eos: int) -> np.ndarray:
  """Tokens up to and including each row's first EOS (N + 1 when a row has none)."""
  is_eos = tokens == eos
  return np.where(is_eos.any(1), is_eos.argmax(1) + 1, N + 1)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_mbart_forced_language_code(converted, tmp_path, num_beams):
  """mBART-50 starts every translation with the target language's code (forced_bos_token_id)."""
  c = converted("mbart", trained=True)
  inputs = hf_models.parity_batch(c.hf_model)
  firsts = _hf_tokens(c.hf_model, inputs, plain=True)[:, 0]
  # Forced ids that some row would not write first: the rows' own first tokens (they differ), then more.
  forced = [t for t in dict.fromkeys(firsts.tolist()) if (firsts != t).any()] + [3, 4, 5]
  candidates = [dict(forced_bos_token_id=t, num_beams=num_beams, max_length=N + 1) for t in forced]
  settings, _ = _first_stable(c, inputs, candidates)
  hf_model, workdir, model = _checkpoint_with(c, tmp_path, settings)
  expected = _hf_tokens(hf_model, inputs)
  assert (expected[:, 0] == settings["forced_bos_token_id"]).all()
  assert workdir_decode_config(workdir).forced_bos_id == settings["forced_bos_token_id"]
  np.testing.assert_array_equal(_ours(model, workdir, inputs), expected)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_bart_summarisation_settings(converted, tmp_path, num_beams):
  """BART-large-CNN's kind of settings: n-gram blocking, min and max length with a forced EOS, beams
  with a length penalty and early stopping. min_length is above the shortest row's natural length and
  max_length below the longest's (the lengths differ by >= 2: hf_models.generation_problem)."""
  c = converted("bart", trained=True)
  inputs = hf_models.parity_batch(c.hf_model)
  eos = c.model.config.eos_id
  natural = _lengths(_hf_tokens(c.hf_model, inputs, plain=True), eos)
  min_new, max_new = int(natural.min()) + 1, int(natural.max()) - 1
  assert min_new <= max_new, natural
  candidates = [
    dict(
      num_beams=num_beams,
      length_penalty=length_penalty,
      early_stopping=num_beams > 1,
      no_repeat_ngram_size=ngram,
      min_length=1 + min_new,  # HF counts the start token
      max_length=1 + max_new,
      forced_eos_token_id=eos,
    )
    for length_penalty in (2.0, 0.6)
    for ngram in (3, 2)
  ]
  settings, _ = _first_stable(c, inputs, candidates)
  hf_model, workdir, model = _checkpoint_with(c, tmp_path, settings)
  expected = _hf_tokens(hf_model, inputs)
  lengths = _lengths(expected, eos)
  assert ((min_new <= lengths) & (lengths <= max_new)).all(), expected  # the settings held
  np.testing.assert_array_equal(_ours(model, workdir, inputs), expected)


def test_t5_settings_from_a_legacy_config_json(converted, tmp_path):
  """A checkpoint from before generation_config.json: beams, min length and n-gram blocking in
  config.json, read as transformers' GenerationConfig.from_model_config reads them."""
  c = converted("t5_v1_1", trained=True)
  inputs = hf_models.parity_batch(c.hf_model)
  natural = _lengths(_hf_tokens(c.hf_model, inputs, plain=True), c.model.config.eos_id)
  candidates = [
    dict(num_beams=4, length_penalty=penalty, min_length=2 + int(natural.min()), max_length=N + 1)
    for penalty in (0.6, 1.0, 2.0)
  ]
  settings, _ = _first_stable(c, inputs, candidates)
  hf_model, workdir, model = _checkpoint_with(c, tmp_path, settings, legacy=True)
  config = workdir_decode_config(workdir)
  assert (config.strategy, config.num_beams, config.min_new_tokens) == (
    "beam",
    4,
    natural.min() + 1,
  )
  np.testing.assert_array_equal(_ours(model, workdir, inputs), _hf_tokens(hf_model, inputs))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_donut_ragged_prompts_and_bad_words(converted, tmp_path, num_beams):
  """Donut-style: each row its own prompt (the start token and k_b of its own tokens), a bad word of
  one token and one of two, each a continuation some row would write; batch of 4 against HF one row
  at a time."""
  c = converted("donut", trained=True)
  inputs = hf_models.parity_batch(c.hf_model)
  config = c.model.config
  natural = _hf_tokens(c.hf_model, inputs, plain=True)
  lengths = _lengths(natural, config.eos_id)
  ks = [min(k, int(n) - 1) for k, n in zip((1, 3, 0, 2), lengths)]  # never past a row's EOS
  prompts = [[config.bos_id] + natural[b, :k].tolist() for b, k in enumerate(ks)]
  # The token and the two-token word each row would write right after its prompt (not its EOS).
  words = [
    natural[b, k : k + 2].tolist() for b, k in enumerate(ks) if k + 2 < lengths[b]
  ]  # both before EOS
  assert len(words) >= 2, (natural, ks)
  candidates = [
    dict(bad_words_ids=[[one[0]], two], num_beams=num_beams, max_new_tokens=N)
    for one in words
    for two in words
    if one != two
  ]
  settings, _ = _first_stable(c, inputs, candidates, prompts)
  hf_model, workdir, model = _checkpoint_with(c, tmp_path, settings)
  expected = _hf_tokens(hf_model, inputs, prompts)
  assert not np.array_equal(expected, _hf_tokens(hf_model, inputs, prompts, plain=True))
  np.testing.assert_array_equal(_ours(model, workdir, inputs, prompts), expected)


def test_workdir_decode_config_layers_generation_calibration_and_overrides(converted, tmp_path):
  """HF's settings, then the calibrated ones (decode_config.json), then the caller's overrides."""
  c = converted("bart")
  settings = dict(num_beams=3, max_length=9, min_length=4, no_repeat_ngram_size=2)
  _, workdir, _ = _checkpoint_with(c, tmp_path, settings)
  config = workdir_decode_config(workdir)
  assert (config.strategy, config.num_beams, config.no_repeat_ngram_size) == ("beam", 3, 2)
  assert (config.max_new_tokens, config.min_new_tokens) == (8, 3)  # the start token counts in HF
  prompted = workdir_decode_config(workdir, prompt_length=3)
  assert (prompted.max_new_tokens, prompted.min_new_tokens) == (6, 1)
  write_json(workdir, DECODE_CONFIG_FILE, dict(exit_mode="deed", threshold=0.7))
  calibrated = workdir_decode_config(workdir, num_beams=2)
  assert (calibrated.threshold, calibrated.num_beams, calibrated.no_repeat_ngram_size) == (
    0.7,
    2,
    2,
  )
  assert workdir_decode_config(workdir, threshold=0.8).threshold == 0.8


def _reference_settings(config: T.PretrainedConfig) -> dict:
  """transformers' own reading of a config.json's generation keys, as DecodeConfig fields."""
  generation = T.GenerationConfig.from_model_config(config).to_dict()
  return hf_settings.decode_fields(generation)[0]


@pytest.mark.parametrize(
  "config",
  [
    T.BartConfig(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=56),
    T.T5Config(decoder_start_token_id=0, max_length=30, early_stopping=True, num_beams=2),
    T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
      T.ViTConfig(), T.MBartConfig(forced_bos_token_id=7, max_length=33, bad_words_ids=[[3]])
    ),
  ],
  ids=["bart", "t5", "vision_encoder_decoder"],
)
def test_legacy_keys_are_read_as_transformers_reads_them(config):
  ours = hf_settings.decode_fields(hf_settings.legacy_settings(config.to_dict()))[0]
  assert ours == _reference_settings(config)


def test_settings_deed_jax_lacks_are_named(converted, tmp_path):
  c = converted("bart")
  settings = dict(do_sample=True, repetition_penalty=1.2, early_stopping="never")
  _, workdir, _ = _checkpoint_with(c, tmp_path, settings)
  with pytest.warns(UserWarning, match=r"do_sample.*repetition_penalty.*never"):
    config = workdir_decode_config(workdir)
  assert config.strategy == "greedy" and not config.early_stopping


def test_a_max_length_that_leaves_no_new_token_is_refused(converted, tmp_path):
  c = converted("bart")
  _, workdir, _ = _checkpoint_with(c, tmp_path, dict(max_length=4))
  with pytest.raises(UserError, match=r"max_length=4 leaves no new token after a prompt of 4"):
    workdir_decode_config(workdir, prompt_length=4)
  assert workdir_decode_config(workdir, prompt_length=4, max_new_tokens=5).max_new_tokens == 5
