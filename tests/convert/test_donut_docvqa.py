"""Donut on DocVQA end to end, as the README's walk-through runs it: a tiny Donut-shaped Hugging Face
model whose tokenizer holds the DocVQA task tokens is converted, run on one page (`deed_jax.generate`),
evaluated on a DocVQA manual_dir with each question's prompt and scored by ANLS, and calibrated.

The model is the copy-task Donut of the parity tests (what it writes depends on the page), under a
word-level tokenizer of its 60 ids. What it answers is read from it first: the naive reference decoder
decodes each page after its prompt and without one; the DocVQA answers are the unprompted decodes, and
the evaluation must score the prompted ones, which differ (checked). The generation config bans a
token (`bad_words_ids`, as Donut's pipelines ban <unk>), which the evaluation and the reference apply
alike."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from deed_jax import checkpoint
from deed_jax.convert import hf_to_orbax
from deed_jax.data import datasets, pipeline, vqa_tfds
from deed_jax.decode_input import decode_input
from deed_jax.decoding.reference import greedy_reference
from deed_jax.evaluation import metrics
from deed_jax.evaluation.evaluator import EvaluateOptions, evaluate
from deed_jax.models import encoder_inputs
from deed_jax.workdir import workdir_decode_config
from tests.training.configs import REPO, load_config

NUM_QUESTIONS = 8  # validation questions: 4 calibration, 4 test
QUESTIONS = [f"what is {i}?" for i in range(NUM_QUESTIONS)]  # one token count for all (checked)


def _tokenizer(directory, vocab_size: int) -> T.PreTrainedTokenizerFast:
  """A word-level tokenizer of `vocab_size` ids: Donut's specials, the questions' words, filler
  words, and the DocVQA task tokens added last as Donut's processor adds them."""
  words = ["what", "is"] + [f"{i}?" for i in range(NUM_QUESTIONS)]
  specials = ["<s>", "<pad>", "</s>", "<unk>"]
  fillers = vocab_size - len(specials) - len(words) - len(vqa_tfds.DOCVQA_TASK_TOKENS)
  vocab = {w: i for i, w in enumerate(specials + words + [f"w{i}" for i in range(fillers)])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece()  # joins words with spaces
  hf = T.PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  )
  hf.add_special_tokens({"additional_special_tokens": list(vqa_tfds.DOCVQA_TASK_TOKENS)})
  assert len(hf) == vocab_size
  hf.save_pretrained(directory)
  return hf


def _donut_checkpoint(directory, hf_model) -> T.PreTrainedTokenizerFast:
  """The HF directory: `hf_model` with a tokenizer of its vocabulary, Donut's preprocessor config
  (it pads) and a generation config banning <unk>."""
  vocab_size = hf_model.config.decoder.vocab_size
  tokenizer = _tokenizer(directory, vocab_size)
  model = copy.deepcopy(hf_model)
  model.generation_config.bad_words_ids = [[tokenizer.unk_token_id]]
  model.save_pretrained(directory)
  (directory / "preprocessor_config.json").write_text(
    json.dumps({"do_resize": True, "do_thumbnail": True, "do_pad": True})
  )
  return tokenizer


def _write_docvqa(root, answers: list[list[str]]) -> None:
  """DocVQA's layout: 2 train questions, NUM_QUESTIONS validation ones, a page each (shapes differ,
  so the model reads different pixels)."""
  for split, count in (("train", 2), ("val", NUM_QUESTIONS)):
    data = []
    for i in range(count):
      path = os.path.join(root, split, "documents", f"doc{i}.png")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      colour = (40 * i % 256, 255 - 30 * i, 90)
      Image.new("RGB", (30 + 17 * i, 60 + 5 * i), colour).save(path)
      data.append(
        {
          "questionId": 1000 * (split == "val") + i,
          "question": QUESTIONS[i],
          "image": f"documents/doc{i}.png",
          "answers": answers[i] if split == "val" else ["a"],
        }
      )
    with open(os.path.join(root, split, f"{split}_v1.0.json"), "w") as f:
      json.dump({"data": data}, f)


def _task(workdir: str, data_dir: str, manual_dir: str):
  config = load_config("docvqa", workdir)
  config.task.data_dir, config.task.manual_dir = data_dir, manual_dir
  return config


@pytest.fixture(scope="module")
def donut(tmp_path_factory, converted):
  """(workdir, its model, tokenizer): the converted tiny Donut."""
  root = tmp_path_factory.mktemp("donut_docvqa")
  hf_dir = root / "hf"
  tokenizer = _donut_checkpoint(hf_dir, converted("donut", trained=True).hf_model)
  workdir = str(root / "workdir")
  hf_to_orbax(str(hf_dir), workdir)
  return (
    workdir,
    checkpoint.load_model(workdir),
    tokenizer,
    T.VisionEncoderDecoderModel.from_pretrained(hf_dir),
  )


def _naive_answers(model, config, examples, prompted: bool) -> list[str]:
  """Static greedy decodes of `examples` by the naive reference, after each one's prompt (or the
  start token alone), with the model's generation constraints; as text."""
  batch = pipeline.stack_examples(examples)
  lengths = batch["prompt_length"]
  width = int(lengths.max())
  n = model.config.max_target_length - width + 1
  prompts = [row[:p].tolist() for row, p in zip(batch["decoder_input_ids"], lengths)]
  decode = workdir_decode_config(config.init_from, width, exit_mode="static", max_new_tokens=n)
  tokens = greedy_reference(
    model, encoder_inputs(batch), decode, prompt=prompts if prompted else None
  ).tokens
  tokenizer = pipeline.task_tokenizer(config.task)
  return [tokenizer.decode(row) for row in np.asarray(tokens)]


def _test_questions(config, image_config: str) -> list[str]:
  """The questions of the `test` split (the validation file's second half)."""
  source = pipeline.data_source(
    "docvqa", image_config, "test", config.task.data_dir, config.task.manual_dir
  )
  return [source[i]["question"].decode() for i in range(len(source))]


def test_donut_docvqa_convert_generate_evaluate_calibrate(donut, tmp_path):
  workdir, model, hf_tokenizer, hf_model = donut
  # 1. The validation pages, read as the evaluation reads them; the model's own answers to them.
  _write_docvqa(tmp_path / "first", [["placeholder"]] * NUM_QUESTIONS)
  config = _task(workdir, str(tmp_path / "tfds1"), str(tmp_path / "first"))
  image_config = datasets.resolve_config("docvqa", "", workdir, model.config.image_size)
  assert image_config == "64x88_pad"  # the model's size, padded as its preprocessor says
  datasets.prepare("docvqa", image_config, config.task.data_dir, config.task.manual_dir)
  source = pipeline.data_source(
    "docvqa", image_config, "validation", config.task.data_dir, config.task.manual_dir
  )
  tokenizer = pipeline.task_tokenizer(config.task)
  assert tokenizer.vocab_size == len(hf_tokenizer)  # the task tokens kept their ids
  preprocess = pipeline.task_preprocess(config.task, model.config, tokenizer)
  examples, _, _ = pipeline.read_examples(source, preprocess, 0)
  by_question = {}
  for example, raw in zip(examples, (source[i] for i in range(len(source)))):
    prompt = raw["prompt"].decode()
    assert prompt == vqa_tfds.docvqa_prompt(raw["question"].decode())
    ids = hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as Donut's processor
    assert example["decoder_input_ids"][: len(ids)].tolist() == ids
    by_question[raw["question"].decode()] = example
  examples = [by_question[q] for q in QUESTIONS]
  assert len({int(e["prompt_length"]) for e in examples}) == 1  # one decode length for every split
  prompted = _naive_answers(model, config, examples, prompted=True)
  unprompted = _naive_answers(model, config, examples, prompted=False)
  answers = [[u or "none", "another answer"] for u in unprompted]
  expected = 100 * np.mean([metrics.anls(p, a) for p, a in zip(prompted, answers)])
  unprompted_anls = 100 * np.mean([metrics.anls(u, a) for u, a in zip(unprompted, answers)])
  assert expected != unprompted_anls, (prompted, unprompted)  # prompts change the score

  # 2. The walk-through: generate on one page (the command line), evaluate, calibrate.
  page = os.path.join(tmp_path / "first", "val", "documents", "doc3.png")
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "deed_jax.generate",
      f"--workdir={workdir}",
      f"--image={page}",
      f"--prompt={vqa_tfds.docvqa_prompt(QUESTIONS[3])}",
      "--config.exit_mode=static",
      "--repeats=1",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert run.returncode == 0, run.stderr
  text, tokens, timing = run.stdout.splitlines()[-3:]
  # HF's own generate with its generation config (max_length 20, <unk> banned) on the same page
  prompt_ids = hf_tokenizer(vqa_tfds.docvqa_prompt(QUESTIONS[3]), add_special_tokens=False)
  with torch.inference_mode():
    hf_out = hf_model.generate(
      pixel_values=torch.tensor(examples[3]["pixel_values"]).permute(2, 0, 1)[None],
      decoder_input_ids=torch.tensor([prompt_ids["input_ids"]]),
    )
  hf_tokens = hf_out[0, len(prompt_ids["input_ids"]) :]
  assert text == hf_tokenizer.decode(hf_tokens, skip_special_tokens=True)
  assert prompted[3].startswith(text)  # the naive decode, with room for more tokens
  layers = model.config.decoder_layers
  assert tokens.startswith("tokens (exit layer): ") and tokens.endswith(f"({layers})")
  assert " ms (median of 1 calls" in timing and "greedy, static" in timing

  _write_docvqa(tmp_path / "second", answers)
  config = _task(workdir, str(tmp_path / "tfds2"), str(tmp_path / "second"))
  options = EvaluateOptions(
    split="test", thresholds=(0.5, 0.9), batch_size=2, calibrate=True, max_drop=100.0, delta=0.5
  )
  report = evaluate(workdir, config, options, progress=False)
  assert report["metric_name"] == "anls" and report["prompt_width"] == examples[0]["prompt_length"]
  assert report["generation_constraints"] == {"bad_words_ids": ((hf_tokenizer.unk_token_id,),)}
  static = [r for r in report["settings"] if r["setting"] == "static"]
  test_half = [QUESTIONS.index(q) for q in _test_questions(config, image_config)]
  expected = 100 * np.mean([metrics.anls(prompted[i], answers[i]) for i in test_half])
  unprompted_anls = 100 * np.mean([metrics.anls(unprompted[i], answers[i]) for i in test_half])
  assert [r["metric"] for r in static] == pytest.approx([expected] * 2)  # batch 1 and 2
  assert expected != unprompted_anls  # what decoding without the prompts would have scored
  assert os.path.isfile(os.path.join(workdir, "evaluation", "report.md"))
  chosen = report["calibrated_threshold"]
  assert chosen in (0.5, 0.9)
  calibrated = decode_input(
    workdir, image=page, prompt=vqa_tfds.docvqa_prompt(QUESTIONS[3]), repeats=1
  )
  assert (calibrated["config"].exit_mode, calibrated["config"].threshold) == ("deed", chosen)
  assert calibrated["config"].bad_words_ids == ((hf_tokenizer.unk_token_id,),)
