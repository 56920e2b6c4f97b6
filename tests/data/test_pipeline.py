"""The real TFDS (ArrayRecord) + grain pipeline on the `tiny` builds of both embedded datasets."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from deed_jax.data import datasets, forms, forms_tfds, pipeline
from deed_jax.data.tokenizer import ByteTokenizer


@pytest.fixture
def data_dir(tfds_dir):
  return tfds_dir


def _loader(data_dir, name, task, split="train", seed=0, rows=(0, 8), first_step=1, steps=None):
  """Global batches of 8 (this reader's `rows` of each), for `steps` steps (default: one epoch)."""
  source = pipeline.data_source(name, "tiny", split, data_dir)
  batches = pipeline.train_batches(
    source, pipeline.Preprocess(task, ByteTokenizer()), 8, rows, seed=seed, first_step=first_step
  )
  return [next(batches) for _ in range(len(source) // 8 if steps is None else steps)]


TARGET_LENGTH = forms.MAX_VALUE_LENGTH + 1
SOURCE_LENGTH = 120
IMAGE_TASK = pipeline.TaskFeatures("image", "image", "answer", 0, TARGET_LENGTH)
TEXT_TASK = pipeline.TaskFeatures("text", "source", "target", SOURCE_LENGTH, TARGET_LENGTH)


def test_prepared_splits_have_the_configured_sizes(data_dir):
  for name in forms_tfds.BUILDERS:
    for split, size in forms_tfds.SIZES["tiny"].items():
      assert len(pipeline.data_source(name, "tiny", split, data_dir)) == size


def test_image_batches_decode_to_the_rendered_forms(data_dir):
  source = pipeline.data_source("forms_vqa", "tiny", "validation", data_dir)
  expected = {
    forms.make_form(2_000_000_000 + i).answer: forms.make_form(2_000_000_000 + i) for i in range(64)
  }
  example = source[0]
  form = expected[example["answer"].decode()]
  np.testing.assert_array_equal(example["image"], forms.render_form(form))
  batch = _loader(data_dir, "forms_vqa", IMAGE_TASK, steps=1)[0]
  assert batch["pixel_values"].shape == (8,) + forms.IMAGE_SIZE + (3,)
  assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
  tok = ByteTokenizer()
  for row in range(8):
    answer = tok.decode(batch["targets"][row])
    assert answer in {f.answer for f in (forms.make_form(1_000_000_000 + i) for i in range(256))}
    n = int(batch["target_mask"][row].sum())
    assert n == len(answer) + 1 and batch["targets"][row, n - 1] == tok.eos_id
    np.testing.assert_array_equal(
      batch["decoder_input_ids"][row, 1:n], batch["targets"][row, : n - 1]
    )


def test_text_batches(data_dir):
  batch = _loader(data_dir, "forms_text", TEXT_TASK, steps=1)[0]
  assert batch["input_ids"].shape == (8, SOURCE_LENGTH)
  assert batch["attention_mask"].shape == (8, SOURCE_LENGTH)
  assert 0 < batch["attention_mask"].sum(1).max() < SOURCE_LENGTH  # Padded, never truncated.
  tok = ByteTokenizer()
  source = tok.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
  assert source.startswith("? ") and tok.decode(batch["targets"][0]) in source


def test_training_order_is_a_function_of_seed_and_step(data_dir):
  first = np.stack([b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3)])
  again = np.stack([b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3)])
  other = np.stack([b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=4)])
  assert len(first) == 256 // 8
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  # One epoch reads every example once; the next epoch reads them all again, in another order.
  source = pipeline.data_source("forms_vqa", "tiny", "train", data_dir)
  tok = ByteTokenizer()
  everything = sorted(
    tok.decode(pipeline.Preprocess(IMAGE_TASK, tok).map(source[i])["targets"])
    for i in range(len(source))
  )
  epoch_2 = np.stack(
    [b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3, first_step=33)]
  )
  for epoch in (first, epoch_2):
    assert sorted(tok.decode(t) for t in epoch.reshape(-1, epoch.shape[-1])) == everything
  assert not np.array_equal(first, epoch_2)
  # A run resumed at step 6 reads what an uninterrupted run reads at step 6.
  resumed = _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3, first_step=6, steps=2)
  np.testing.assert_array_equal(np.stack([b["targets"] for b in resumed]), first[5:7])


def test_processes_read_their_rows_of_the_same_global_batches(data_dir):
  """Two readers of rows 0-3 and 4-7 together read each global batch a single reader reads; the
  row spans come from the batch sharding of a mesh split over 2 processes' devices."""
  whole = _loader(data_dir, "forms_text", TEXT_TASK, steps=3)
  top = _loader(data_dir, "forms_text", TEXT_TASK, rows=(0, 4), steps=3)
  bottom = _loader(data_dir, "forms_text", TEXT_TASK, rows=(4, 8), steps=3)
  for step in range(3):
    for key in whole[step]:
      np.testing.assert_array_equal(
        np.concatenate([top[step][key], bottom[step][key]]), whole[step][key]
      )
  assert pipeline.process_rows(jax.sharding.SingleDeviceSharding(jax.devices()[0]), 8) == (0, 8)


def test_eval_batches_cover_the_split_once_and_mark_the_padding(data_dir):
  source = pipeline.data_source("forms_text", "tiny", "validation", data_dir)
  preprocess = pipeline.Preprocess(TEXT_TASK, ByteTokenizer())
  batches = list(pipeline.eval_batches(source, preprocess, 24, (0, 24)))
  assert len(source) == 64 and len(batches) == 3  # 24 + 24 + 16 real rows, 8 padding
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(72) < 64)
  targets = np.concatenate([b["targets"] for b in batches])
  for i in (0, 30, 63):
    np.testing.assert_array_equal(targets[i], preprocess.map(source[i])["targets"])
  np.testing.assert_array_equal(targets[64:], np.repeat(targets[63:64], 8, axis=0))
  halves = [
    list(pipeline.eval_batches(source, preprocess, 24, rows)) for rows in ((0, 12), (12, 24))
  ]
  np.testing.assert_array_equal(
    np.concatenate([np.concatenate([a["targets"], b["targets"]]) for a, b in zip(*halves)]), targets
  )


def test_unknown_dataset_or_config_is_refused(tmp_path):
  with pytest.raises(ValueError, match="'forms_audio'"):
    datasets.prepare("forms_audio", "tiny", str(tmp_path))
  with pytest.raises(ValueError, match="'huge'"):
    datasets.prepare("forms_vqa", "huge", str(tmp_path))
  assert not any(tmp_path.iterdir())


PROMPTED_TASK = pipeline.TaskFeatures(
  "image", "image", "answer", 0, forms.MAX_PROMPT_TOKENS + forms.MAX_VALUE_LENGTH, "prompt"
)


def test_a_prompted_example_is_prompt_then_answer_with_the_loss_on_the_answer_alone(data_dir):
  """forms_vqa's prompted build: the header row is blank, the question is the decoder prompt; the
  targets continue the prompt and only the answer and its EOS are in the mask."""
  source = pipeline.data_source("forms_vqa", "tiny_normalised_prompted", "validation", data_dir)
  tok = ByteTokenizer(forms.TASK_TOKENS)
  preprocess = pipeline.Preprocess(PROMPTED_TASK, tok)
  for example in [source[i] for i in range(4)]:
    features = preprocess.map(example)
    question, answer = example["question"].decode(), example["answer"].decode()
    form = forms.make_form(_seed_of(question, answer), "normalised")
    np.testing.assert_array_equal(example["image"], forms.render_form(form, question_row=False))
    prompt = tok.encode(f"<s_forms><s_question>{question}</s_question><s_answer>")
    p, n = len(prompt), len(tok.encode(answer))
    assert features["prompt_length"] == p and prompt[0] == 259  # the task token starts it
    assert features["decoder_input_ids"][: p + n].tolist() == prompt + tok.encode(answer)
    assert features["targets"][: p + n].tolist() == prompt[1:] + tok.encode(answer) + [tok.eos_id]
    assert features["target_mask"].tolist() == [0] * (p - 1) + [1] * (n + 1) + [0] * (
      PROMPTED_TASK.max_target_length - p - n
    )


def _seed_of(question: str, answer: str) -> int:
  """The validation form with this question and answer (forms_tfds: seed 2e9 + index)."""
  for i in range(forms_tfds.SIZES["tiny"]["validation"]):
    form = forms.make_form(2_000_000_000 + i, "normalised")
    if (form.question, form.answer) == (question, answer):
      return 2_000_000_000 + i
  raise AssertionError((question, answer))


def test_a_prompt_that_leaves_no_room_for_an_answer_is_refused():
  task = pipeline.TaskFeatures("text", "source", "target", 8, 6, "prompt")
  preprocess = pipeline.Preprocess(task, ByteTokenizer())
  example = {"source": b"x", "target": b"y", "prompt": b"123456"}
  with pytest.raises(ValueError, match=r"'123456' has 6 tokens; a prompt needs 1 to .* = 5"):
    preprocess.map(example)
  with pytest.raises(ValueError, match=r"'' has 0 tokens"):
    preprocess.map({**example, "prompt": b""})
