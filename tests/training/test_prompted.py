"""Training and validation with decoder prompts: the loss leaves prompt positions out, and the
validation decoder (traced prompts in the batch layout) decodes what the fast decoder and the naive
list-prompt reference decode; the prompted forms config trains and evaluates end to end."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from deed_jax import checkpoint
from deed_jax.data import forms, pipeline
from deed_jax.data.tokenizer import ByteTokenizer
from deed_jax.decoding import DecodeConfig, generate
from deed_jax.decoding.reference import greedy_encoded_at_exit, greedy_reference
from deed_jax.evaluation.evaluator import EvaluateOptions, evaluate
from deed_jax.evaluation.sweep import batch_prompt
from deed_jax.exit_metrics import exit_metrics
from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs
from deed_jax.train import train_and_evaluate
from tests.conftest import randomize, tiny_config
from tests.training.configs import load_config

T = 10  # the tiny model's decoder positions
T_FORMS = forms.MAX_PROMPT_TOKENS + forms.MAX_VALUE_LENGTH  # the prompted forms config's
# Donut-style: a task token starts each prompt; ragged (the task token alone in one row).
PROMPTS = ("<s_task>ab", "<s_task>abcdef", "<s_task>", "<s_task>abcd")
TOKENIZER = ByteTokenizer(("<s_task>",))  # the task token is id 259


def _model(seed: int = 1) -> MultiExitEncoderDecoder:
  config = tiny_config(vocab_size=TOKENIZER.vocab_size, max_target_length=T)
  return randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=seed, scale=1.0)


def _decode(model, batch: dict, layer: int, width: int, n: int) -> np.ndarray:
  config = DecodeConfig(exit_mode="fixed", fixed_exit_layer=layer, max_new_tokens=n)
  return np.asarray(
    generate(model, encoder_inputs(batch), config, prompt=batch_prompt(batch, width)).tokens
  )


def _varied_model(batch: dict, width: int, n: int) -> MultiExitEncoderDecoder:
  """The first random model whose rows decode differently at every exit (chosen from the data: a
  random model often repeats one token everywhere, which would test little)."""
  for seed in range(16):
    model = _model(seed)
    layers = range(1, model.config.decoder_layers + 1)
    if all(
      len({tuple(r) for r in _decode(model, batch, k, width, n).tolist()}) > 1 for k in layers
    ):
      return model
  raise AssertionError("no random model of 16 decodes varied rows")


def _prompted_batch() -> dict:
  """Text examples with the prompts above, preprocessed as training and evaluation do."""
  task = pipeline.TaskFeatures("text", "source", "target", 12, T, "prompt")
  preprocess = pipeline.Preprocess(task, TOKENIZER)
  rng = np.random.default_rng(0)
  letters = lambda n: bytes(rng.integers(97, 123, size=n).tolist())
  return pipeline.stack_examples(
    [
      preprocess.map({"source": letters(9), "target": letters(3), "prompt": prompt.encode()})
      for prompt in PROMPTS
    ]
  )


def test_every_exit_loss_leaves_the_prompt_out():
  """Against cross-entropy recomputed by hand over the answer positions alone."""
  model, batch = _model(), _prompted_batch()
  metrics = exit_metrics(model, batch)
  logits = np.asarray(model(encoder_inputs(batch), batch["decoder_input_ids"]), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # [L, B, T, V]
  expected = np.zeros(model.config.decoder_layers)
  count = 0
  for b, length in enumerate(batch["prompt_length"]):
    answer = TOKENIZER.decode(batch["targets"][b, length - 1 :])  # answer + EOS from P_b - 1 on
    for i in range(len(answer) + 1):
      t = length - 1 + i
      expected -= log_probs[:, b, t, batch["targets"][b, t]]
      count += 1
  np.testing.assert_allclose(np.asarray(metrics.loss), expected / count, rtol=1e-5)
  assert count == int(batch["target_mask"].sum()) < int((batch["targets"] > 0).sum())


def test_validation_decoding_with_prompts_equals_the_fast_and_the_naive_decoders():
  """Three decoders of one prompted batch at every exit: the validation one (prompts traced in the
  batch's decoder inputs, jitted), `generate` with the prompts laid out at a fixed width, and the
  naive reference with token-id lists."""
  batch = _prompted_batch()
  width = int(batch["prompt_length"].max())
  n = T - width + 1  # what every row has room for
  model = _varied_model(batch, width, n)
  inputs = encoder_inputs(batch)
  layout = (batch["decoder_input_ids"], batch["prompt_length"])
  prompts = [row[:p].tolist() for row, p in zip(batch["decoder_input_ids"], batch["prompt_length"])]
  encoded = model.encode(inputs)
  validation = jax.jit(
    lambda layer, layout: greedy_encoded_at_exit(model, *encoded, layer, T, prompt_layout=layout)
  )
  for layer in range(1, model.config.decoder_layers + 1):
    config = DecodeConfig(exit_mode="fixed", fixed_exit_layer=layer, max_new_tokens=n)
    fast = _decode(model, batch, layer, width, n)
    naive = np.asarray(greedy_reference(model, inputs, config, prompt=prompts).tokens)
    validated = np.asarray(validation(layer, layout))  # [B, T]: rows run until out of room
    np.testing.assert_array_equal(fast, naive)
    np.testing.assert_array_equal(validated[:, :n], fast)
    for b, p in enumerate(batch["prompt_length"]):  # a row has T - P_b + 1 tokens of room
      assert (validated[b, T - p + 1 :] == model.config.pad_id).all()


def test_prompted_forms_config_trains_validates_and_evaluates(tmp_path, tfds_dir):
  """configs/forms_vqa.py:runlocal,prompted at a tiny size: training masks the prompt, validation
  decodes after it (its samples are what `generate` decodes after the same prompts), and evaluation
  decodes the grid after each example's prompt."""
  config = load_config("forms_vqa", "runlocal,prompted")
  config.task.dataset_config = "tiny_normalised_prompted"
  config.task.data_dir = tfds_dir
  config.model.update(
    dict(d_model=32, num_heads=4, d_ff=48, encoder_layers=1, decoder_layers=2, adapter_dim=8)
  )
  config.update(
    dict(
      batch_size=8,
      eval_batch_size=32,
      total_steps=3,
      checkpoint_every_steps=3,
      eval_every_steps=3,
      num_eval_samples=3,
    )
  )
  workdir = str(tmp_path / "run")
  results = train_and_evaluate(config, workdir, progress=False)
  assert results["step"] == 3 and np.isfinite(results["exit_loss"]).all()

  model = checkpoint.load_model(workdir)
  tokenizer = pipeline.task_tokenizer(config.task)
  source = pipeline.data_source("forms_vqa", config.task.dataset_config, "validation", tfds_dir)
  preprocess = pipeline.task_preprocess(config.task, model.config, tokenizer)
  examples, answers, _ = pipeline.read_examples(source, preprocess, 3)
  batch = pipeline.stack_examples(examples)
  width = int(batch["prompt_length"].max())
  assert width > 4  # the task tokens and the question
  for layer in (1, 2):
    config_k = DecodeConfig(
      exit_mode="fixed", fixed_exit_layer=layer, max_new_tokens=T_FORMS - width + 1
    )
    out = generate(model, encoder_inputs(batch), config_k, prompt=batch_prompt(batch, width))
    for sample, tokens, answer in zip(results["samples"], np.asarray(out.tokens), answers):
      assert sample["target"] == answer[0]
      assert sample["exits"][layer - 1].startswith(tokenizer.decode(tokens))

  report = evaluate(
    workdir,
    options=EvaluateOptions(split="validation", num_examples=4, thresholds=(0.5,), batch_size=2),
    progress=False,
  )
  names = ("static", "fixed exit 1", "copy tau=0.5", "deed tau=0.5")
  assert {(r["setting"], r["batch_size"]) for r in report["settings"]} == {
    (name, size) for name in names for size in (1, 2)
  }
