"""The real TFDS (ArrayRecord) + grain pipeline on the `tiny` builds of both embedded datasets."""

from __future__ import annotations

import numpy as np
import pytest

from deed_jax.data import datasets, forms, forms_tfds, pipeline
from deed_jax.data.tokenizer import ByteTokenizer


@pytest.fixture
def data_dir(tfds_dir):
  return tfds_dir


def _loader(data_dir, name, task, split="train", seed=0, shuffle=True):
  source = pipeline.data_source(name, "tiny", split, data_dir)
  return pipeline.make_loader(source, pipeline.Preprocess(task, ByteTokenizer()), 8, shuffle=shuffle,
                              seed=seed, num_epochs=1, drop_remainder=True)


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
  expected = {forms.make_form(2_000_000_000 + i).answer: forms.make_form(2_000_000_000 + i)
              for i in range(64)}
  example = source[0]
  form = expected[example["answer"].decode()]
  np.testing.assert_array_equal(example["image"], forms.render_form(form))
  batch = next(iter(_loader(data_dir, "forms_vqa", IMAGE_TASK)))
  assert batch["pixel_values"].shape == (8,) + forms.IMAGE_SIZE + (3,)
  assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
  tok = ByteTokenizer()
  for row in range(8):
    answer = tok.decode(batch["targets"][row])
    assert answer in {f.answer for f in (forms.make_form(1_000_000_000 + i) for i in range(256))}
    n = int(batch["target_mask"][row].sum())
    assert n == len(answer) + 1 and batch["targets"][row, n - 1] == tok.eos_id
    np.testing.assert_array_equal(batch["decoder_input_ids"][row, 1:n], batch["targets"][row, :n - 1])


def test_text_batches(data_dir):
  batch = next(iter(_loader(data_dir, "forms_text", TEXT_TASK)))
  assert batch["input_ids"].shape == (8, SOURCE_LENGTH)
  assert batch["attention_mask"].shape == (8, SOURCE_LENGTH)
  assert 0 < batch["attention_mask"].sum(1).max() < SOURCE_LENGTH  # Padded, never truncated.
  tok = ByteTokenizer()
  source = tok.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
  assert source.startswith("? ") and tok.decode(batch["targets"][0]) in source


def test_pipeline_is_deterministic_and_resumable(data_dir):
  first = [b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3)]
  again = [b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3)]
  other = [b["targets"] for b in _loader(data_dir, "forms_vqa", IMAGE_TASK, seed=4)]
  assert len(first) == 256 // 8
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))
  iterator = iter(_loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3))
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  resumed = iter(_loader(data_dir, "forms_vqa", IMAGE_TASK, seed=3))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["targets"], first[5])


def test_unknown_dataset_or_config_is_refused(tmp_path):
  with pytest.raises(ValueError, match="'forms_audio'"):
    datasets.prepare("forms_audio", "tiny", str(tmp_path))
  with pytest.raises(ValueError, match="'huge'"):
    datasets.prepare("forms_vqa", "huge", str(tmp_path))
  assert not any(tmp_path.iterdir())
