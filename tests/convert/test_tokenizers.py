"""A converted workdir's own tokenizer encodes sources exactly as `transformers` does (special tokens
from the tokenizer's post-processor: BART's <s> ... </s>, T5's ... </s>, which has no <s>), and
fine-tuning a converted BART and T5 with it runs and decodes."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from deed_jax import checkpoint
from deed_jax.convert import ConvertOptions, hf_to_orbax
from deed_jax.data import forms, pipeline
from deed_jax.data.tokenizer import get_tokenizer
from deed_jax.decoding import DecodeConfig, generate
from deed_jax.train import train_and_evaluate
from tests.training.configs import tiny_text_config

TEXTS = [forms.form_as_text(forms.make_form(seed)) for seed in range(40)]
# (special tokens in id order, the tokenizer_config.json transformers reads, source template)
FAMILIES = {
  "bart": (
    ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],  # as BART's own: <mask> is in the file
    {
      "tokenizer_class": "BartTokenizerFast",
      "bos_token": "<s>",
      "eos_token": "</s>",
      "pad_token": "<pad>",
      "unk_token": "<unk>",
      "model_max_length": 128,
    },
  ),
  "t5": (
    ["<pad>", "</s>", "<unk>"],
    {
      "tokenizer_class": "T5TokenizerFast",
      "eos_token": "</s>",
      "pad_token": "<pad>",
      "unk_token": "<unk>",
      "extra_ids": 0,
      "model_max_length": 128,
    },
  ),
}


def _tokenizer(family: str, directory) -> int:
  """A byte-level BPE fitted to the task's text, with the family's specials and post-processor,
  saved as transformers saves one. -> its vocabulary size."""
  specials, config = FAMILIES[family]
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
    TEXTS,
    trainers.BpeTrainer(
      vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ),
  )
  ids = {token: tokenizer.token_to_id(token) for token in specials}
  if family == "bart":  # as BART's own tokenizer.json
    tokenizer.post_processor = processors.RobertaProcessing(
      ("</s>", ids["</s>"]), ("<s>", ids["<s>"])
    )
  else:  # as T5's: the text, then </s>
    tokenizer.post_processor = processors.TemplateProcessing(
      single="$A </s>", special_tokens=[("</s>", ids["</s>"])]
    )
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(config))
  return tokenizer.get_vocab_size()


def _model(family: str, vocab: int):
  torch.manual_seed(0)
  if family == "bart":
    return T.BartForConditionalGeneration(
      T.BartConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=112,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
      )
    )
  return T.T5ForConditionalGeneration(
    T.T5Config(
      vocab_size=vocab,
      d_model=32,
      d_kv=8,
      d_ff=48,
      num_layers=1,
      num_decoder_layers=2,
      num_heads=4,
      pad_token_id=0,
      eos_token_id=1,
      decoder_start_token_id=0,
    )
  )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fine_tuning_a_converted_model_with_its_own_tokenizer(tmp_path, tfds_dir, family):
  hf_dir = tmp_path / "hf"
  vocab = _tokenizer(family, hf_dir)
  _model(family, vocab).save_pretrained(hf_dir)
  converted = str(tmp_path / "converted")
  # T5's relative positions need a bound on the decoder length; BART's table gives one.
  hf_to_orbax(
    str(hf_dir), converted, ConvertOptions(max_target_length=40 if family == "t5" else None)
  )

  ours = get_tokenizer(converted)  # the tokenizer files travelled with the weights
  theirs = T.AutoTokenizer.from_pretrained(str(hf_dir))
  assert (ours.pad_id, ours.eos_id) == (theirs.pad_token_id, theirs.eos_token_id)
  assert ours.bos_id == theirs.bos_token_id  # None for T5
  for text in TEXTS[:10]:
    expected = theirs(text)["input_ids"]
    assert ours.encode_source(text, 512) == expected
    assert expected[-1] == theirs.eos_token_id and (family == "t5") == (expected[0] != ours.bos_id)
    truncated = theirs(text, truncation=True, max_length=12)["input_ids"]
    assert ours.encode_source(text, 12) == truncated and len(truncated) == 12
    assert ours.decode(ours.encode(text)) == text

  config = tiny_text_config(tfds_dir, total_steps=2, checkpoint_every_steps=2)
  config.model = ml_collections.ConfigDict()
  config.init_from = converted
  config.task.tokenizer = converted
  workdir = str(tmp_path / "run")
  results = train_and_evaluate(config, workdir, progress=False)
  assert results["step"] == 2 and len(results["exit_exact_match"]) == 2

  # The training pipeline feeds the encoder exactly what transformers' tokenizer gives.
  model = checkpoint.load_model(workdir)
  features = pipeline.TaskFeatures(
    encoder="text",
    source_key="source",
    target_key="target",
    max_source_length=config.task.max_source_length,
    max_target_length=model.config.max_target_length,
  )
  example = {"source": TEXTS[0].encode(), "target": b"x"}
  batch = pipeline.Preprocess(features, ours, decoder_start_id=model.config.bos_id).map(example)
  expected = theirs(TEXTS[0], truncation=True, max_length=config.task.max_source_length)[
    "input_ids"
  ]
  assert batch["input_ids"][: len(expected)].tolist() == expected
  assert batch["attention_mask"].sum() == len(expected)
  assert batch["decoder_input_ids"][0] == theirs.convert_tokens_to_ids(
    "</s>" if family == "bart" else "<pad>"
  )  # HF's decoder start: EOS for BART, pad for T5

  out = generate(
    model,
    {"input_ids": batch["input_ids"][None], "attention_mask": batch["attention_mask"][None]},
    DecodeConfig(max_new_tokens=8, threshold=0.5),
  )
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (1, 8) and tokens.max() < model.config.vocab_size
  assert isinstance(ours.decode(tokens[0]), str)


DONUT_TASK_TOKENS = ("<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>", "</s_answer>")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_task_tokens_get_the_ids_transformers_gives_them(tmp_path, family):
  """Donut's processor adds its task tokens with add_special_tokens; ours are the same ids, and a
  prompt in the task's format encodes as transformers encodes it (add_special_tokens=False)."""
  _tokenizer(family, tmp_path)
  theirs = T.AutoTokenizer.from_pretrained(str(tmp_path))
  known = theirs.eos_token  # a token the file already holds keeps its id
  theirs.add_special_tokens({"additional_special_tokens": [*DONUT_TASK_TOKENS, known]})
  ours = get_tokenizer(str(tmp_path), (*DONUT_TASK_TOKENS, known))
  prompt = "<s_docvqa><s_question>what is the date?</s_question><s_answer>"
  assert ours.encode(prompt) == theirs(prompt, add_special_tokens=False)["input_ids"]
  assert ours.vocab_size == len(theirs)
  ids = ours.encode(prompt + "May 3</s_answer>")
  assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
