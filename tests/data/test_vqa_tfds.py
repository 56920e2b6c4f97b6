"""The VQA builders over data on disk (DocVQA, ST-VQA / TextVQA layouts): tiny folders of each layout
built here, prepared by real TFDS builders, read by the pipeline."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from deed_jax.data import datasets, pipeline, vqa_tfds
from deed_jax.data.tokenizer import ByteTokenizer
from deed_jax.errors import MissingPathError, UserError


def _image(path, size, colour):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(path)


def _docvqa(root):
  """train: 3 questions; val: 4 with answers + 1 without (skipped)."""
  for split, count in (("train", 3), ("val", 5)):
    data = []
    for i in range(count):
      _image(os.path.join(root, split, "documents", f"doc{i}.png"), (20 + 10 * i, 60), "white")
      answers = [f"answer {split} {i}", f"alt {i}"] if not (split == "val" and i == 4) else []
      data.append(
        {
          "questionId": 100 * (split == "val") + i,
          "question": f"what is {i}?",
          "image": f"documents/doc{i}.png",
          "docId": i,
          "answers": answers,
        }
      )
    with open(os.path.join(root, split, f"{split}_v1.0.json"), "w") as f:
      json.dump({"dataset_name": "docvqa", "dataset_split": split, "data": data}, f)


def test_docvqa_layout_prepares_splits_and_features(tmp_path):
  manual = str(tmp_path / "DocVQA")
  _docvqa(manual)
  builder = datasets.prepare("docvqa", "32x48_pad", str(tmp_path / "tfds"), manual)
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  assert splits == {"train": 3, "validation": 4, "calibration": 2, "test": 2}
  source = pipeline.data_source("docvqa", "32x48_pad", "test", str(tmp_path / "tfds"), manual)
  calibration = pipeline.data_source(
    "docvqa", "32x48_pad", "calibration", str(tmp_path / "tfds"), manual
  )
  # Half the validation pages each (cut by page, tests/data/test_vqa_layouts.py), in some order.
  by_id = {source[i]["question_id"].decode(): source[i] for i in range(len(source))}
  others = {calibration[i]["question_id"].decode() for i in range(len(calibration))}
  assert len(by_id) == 2 and set(by_id) | others == {"100", "101", "102", "103"}
  i = int(min(by_id)) - 100
  example = by_id[min(by_id)]
  assert example["image"].shape == (32, 48, 3)
  assert pipeline.answers(example, "answers") == [f"answer val {i}", f"alt {i}"]
  assert pipeline.answers(example, "answer") == [f"answer val {i}"]
  assert example["question"].decode() == f"what is {i}?"
  # The pipeline turns it into model features, with every answer beside them.
  features = pipeline.TaskFeatures(
    encoder="image",
    source_key="image",
    target_key="answer",
    max_source_length=0,
    max_target_length=16,
  )
  preprocess = pipeline.Preprocess(features, ByteTokenizer())
  examples, answers, groups = pipeline.read_examples(source, preprocess, 0, "answers")
  ids = [int(k) - 100 for k in by_id]
  assert sorted(answers) == sorted([f"answer val {j}", f"alt {j}"] for j in ids)
  assert sorted(groups) == sorted(str(j) for j in ids)  # DocVQA 1.0 records: docId is the page
  assert examples[0]["pixel_values"].shape == (32, 48, 3)
  assert [ByteTokenizer().decode(e["targets"]) for e in examples] == [a[0] for a in answers]


def test_stvqa_layouts_with_file_paths_and_image_ids(tmp_path):
  manual = str(tmp_path / "stvqa")
  _image(os.path.join(manual, "coco", "a.jpg"), (30, 30), "red")
  _image(os.path.join(manual, "images", "b.jpg"), (30, 30), "blue")
  entries = [
    {"question": "q a", "answers": ["x"] * 10, "file_path": "coco/a.jpg"},
    {"question": "q b", "answers": ["y", "z"], "image_id": "b"},
  ]
  with open(os.path.join(manual, "train.json"), "w") as f:
    json.dump({"data": entries}, f)
  with open(os.path.join(manual, "val.json"), "w") as f:
    json.dump({"data": entries[::-1]}, f)
  builder = datasets.prepare("stvqa", "16x24_resize", str(tmp_path / "tfds"), manual)
  assert builder.info.splits["train"].num_examples == 2
  source = pipeline.data_source("stvqa", "16x24_resize", "train", str(tmp_path / "tfds"), manual)
  images = {source[i]["question"].decode(): source[i]["image"] for i in range(2)}
  red, blue = images["q a"], images["q b"]
  assert red.shape == (16, 24, 3)
  assert red[..., 0].min() > 200 and red[..., 2].max() < 60  # stretched over the whole canvas
  assert blue[..., 2].min() > 200
  assert sorted(len(pipeline.answers(source[i], "answers")) for i in range(2)) == [2, 10]


def test_fit_image_pads_centred_or_stretches():
  tall = Image.new("RGB", (10, 40), "white")
  padded = vqa_tfds.fit_image(tall, 20, 20, "pad")  # scaled to 5 x 20, centred on black
  assert padded.shape == (20, 20, 3)
  columns = padded[10, :, 0]
  assert (columns[:7] == 0).all() and (columns[8:12] == 255).all() and (columns[13:] == 0).all()
  stretched = vqa_tfds.fit_image(tall, 20, 20, "resize")
  assert (stretched == 255).all()


def test_image_config_name_follows_the_preprocessor(tmp_path):
  assert vqa_tfds.image_config_name(str(tmp_path), (64, 96)) == "64x96_pad"  # no file: pad
  (tmp_path / "preprocessor_config.json").write_text(
    json.dumps({"do_resize": True, "do_pad": False})
  )
  assert vqa_tfds.image_config_name(str(tmp_path), (64, 96)) == "64x96_resize"
  (tmp_path / "preprocessor_config.json").write_text(
    json.dumps({"do_thumbnail": True, "do_pad": True})
  )
  assert vqa_tfds.image_config_name(str(tmp_path), (2560, 1920)) == "2560x1920_pad"
  assert vqa_tfds.image_config_name(str(tmp_path), 224) == "224x224_pad"
  # A task config leaving the VQA builder's config empty gets the model's; others keep theirs.
  assert datasets.resolve_config("docvqa", "", str(tmp_path), (64, 96)) == "64x96_pad"
  assert (
    datasets.resolve_config("docvqa", "32x32_resize", str(tmp_path), (64, 96)) == "32x32_resize"
  )
  assert datasets.resolve_config("forms_vqa", "tiny", str(tmp_path), (64, 96)) == "tiny"


def _bad_folders(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  unrelated = tmp_path / "unrelated"
  unrelated.mkdir()
  (unrelated / "notes.txt").write_text("hello")
  malformed = tmp_path / "malformed"
  (malformed / "val").mkdir(parents=True)
  (malformed / "val" / "val_v1.0.json").write_text("{not json")
  wrong_shape = tmp_path / "wrong_shape"
  (wrong_shape / "val").mkdir(parents=True)
  (wrong_shape / "val" / "val_v1.0.json").write_text(json.dumps({"data": [{"answers": ["a"]}]}))
  no_image = tmp_path / "no_image"
  (no_image / "val").mkdir(parents=True)
  (no_image / "val" / "val_v1.0.json").write_text(
    json.dumps({"data": [{"question": "q", "answers": ["a"], "image": "documents/gone.png"}]})
  )
  return {
    "missing": (str(tmp_path / "missing"), MissingPathError, "missing"),
    "empty": (str(empty), MissingPathError, "empty"),
    "unrelated": (str(unrelated), UserError, "no question files"),
    "malformed": (str(malformed), UserError, "val_v1.0.json"),
    "wrong_shape": (str(wrong_shape), UserError, "val_v1.0.json"),
    "no_image": (str(no_image), MissingPathError, "gone.png"),
  }


@pytest.mark.parametrize(
  "case", ["missing", "empty", "unrelated", "malformed", "wrong_shape", "no_image"]
)
def test_bad_manual_dirs_are_refused_before_anything_is_written(tmp_path, case):
  manual, error, named = _bad_folders(tmp_path)[case]
  data_dir = tmp_path / "tfds"
  with pytest.raises(error, match=named):
    datasets.prepare("docvqa", "32x48_pad", str(data_dir), manual)
  assert not data_dir.exists()


@pytest.mark.parametrize(
  "name, config, manual, named",
  [
    ("docvqa", "32x48", "x", "'32x48'"),
    ("docvqa", "4x48_pad", "x", "'4x48_pad'"),
    ("docvqa", "32x48_pad", "", "manual_dir"),
    ("textcaps", "32x48_pad", "x", "'textcaps'"),
  ],
)
def test_bad_dataset_names_and_configs(tmp_path, name, config, manual, named):
  with pytest.raises(UserError, match=named):
    datasets.check(name, config, manual)


def _escaping_folder(tmp_path, kind: str) -> str:
  """A DocVQA folder whose second validation question names an image outside it (the image exists)."""
  outside = tmp_path / "outside.png"
  _image(str(outside), (20, 20), "red")
  manual = tmp_path / "DocVQA"
  _image(str(manual / "val" / "documents" / "ok.png"), (20, 20), "white")
  if kind == "symlink":
    os.symlink(outside, manual / "val" / "documents" / "link.png")
  image = {
    "dotdot": "../../outside.png",
    "absolute": str(outside),
    "symlink": "documents/link.png",
  }[kind]
  data = [
    {"questionId": 7, "question": "q", "image": "documents/ok.png", "answers": ["a"]},
    {"questionId": 8, "question": "q", "image": image, "answers": ["a"]},
  ]
  (manual / "val" / "val_v1.0.json").write_text(json.dumps({"data": data}))
  return str(manual)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_an_image_path_leaving_manual_dir_is_refused_naming_the_record(tmp_path, kind):
  manual = _escaping_folder(tmp_path, kind)
  data_dir = tmp_path / "tfds"
  with pytest.raises(UserError, match=r"questionId=8.*outside manual_dir") as refusal:
    datasets.prepare("docvqa", "32x48_pad", str(data_dir), manual)
  assert "val_v1.0.json" in str(refusal.value)
  assert not data_dir.exists()


def test_stvqa_file_paths_are_confined_too(tmp_path):
  manual = tmp_path / "stvqa"
  _image(str(tmp_path / "elsewhere.jpg"), (20, 20), "blue")
  manual.mkdir()
  data = [{"question": "q", "answers": ["a"], "file_path": "../elsewhere.jpg"}]
  (manual / "train.json").write_text(json.dumps({"data": data}))
  with pytest.raises(UserError, match=r"question #0 of the file.*outside manual_dir"):
    datasets.prepare("stvqa", "32x48_pad", str(tmp_path / "tfds"), str(manual))
  assert not (tmp_path / "tfds").exists()
