"""The VQA releases' files as they ship, read into questions: which question files each release
holds, where a record's image lies, and which questions share a document or image (a group).

Groups decide every split this module cuts: calibration and test halves of the validation questions
(and ST-VQA's validation, cut from its train file) never share a document or image, so the
calibration guarantee's examples are exchangeable groups rather than near-copies on both sides. A
cut is seeded and independent of the order of the file (`grouping.cut_by_group`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

from deed_jax.data import grouping
from deed_jax.errors import MissingPathError, UserError

SPLIT_SEED = 0  # the seed of every group cut (part of the builders' version)
STVQA_VALIDATION_SHARE = 0.1  # of ST-VQA's train questions, cut by image as its validation split


@dataclasses.dataclass(frozen=True)
class Question:
  question_id: str  # the record's id, as a string
  question: str
  answers: tuple[str, ...]  # all of them, in file order (none in test_unlabelled)
  image: str  # the image file, inside manual_dir
  group: str  # the document or image the question is about


@dataclasses.dataclass(frozen=True)
class Layout:
  """One release's files under manual_dir. `files`: split (train, validation, test_unlabelled) ->
  question file; `image(record, split)` and `group(record)`: a record's image path (relative to
  manual_dir) and group; `tree`: the layout as shown in errors."""

  release: str
  files: dict[str, str]
  image: Callable[[dict, str], str]
  group: Callable[[dict], str]
  tree: str
  validation_from_train: bool = False  # ST-VQA ships no validation file


def _docvqa_page(record: dict) -> str:
  """DocVQA groups the pages of one UCSF document (docId is one page; the image where neither)."""
  for key in ("ucsf_document_id", "docId", "image"):
    if record.get(key) not in (None, ""):
      return str(record[key])
  return ""


def _strip_documents(image: str) -> str:
  return image[len("documents/") :] if image.startswith("documents/") else image


_FOLDER = {"train": "train", "validation": "val", "test_unlabelled": "test"}

LAYOUTS: dict[str, tuple[Layout, ...]] = {
  "docvqa": (
    Layout(
      release="SP-DocVQA (the current RRC download)",
      files={
        "train": "spdocvqa_qas/train_v1.0_withQT.json",
        "validation": "spdocvqa_qas/val_v1.0_withQT.json",
        "test_unlabelled": "spdocvqa_qas/test_v1.0.json",
      },
      image=lambda r, _: os.path.join("spdocvqa_images", _strip_documents(str(r.get("image", "")))),
      group=_docvqa_page,
      tree="spdocvqa_qas/{train,val}_v1.0_withQT.json, spdocvqa_qas/test_v1.0.json\n"
      '    spdocvqa_images/x.png   (a record\'s "image": "documents/x.png")',
    ),
    Layout(
      release="DocVQA 1.0 (per-split folders)",
      files={split: f"{folder}/{folder}_v1.0.json" for split, folder in _FOLDER.items()},
      image=lambda r, split: os.path.join(_FOLDER[split], str(r.get("image", ""))),
      group=_docvqa_page,
      tree="{train,val,test}/<split>_v1.0.json, {train,val,test}/documents/x.png",
    ),
  ),
  "stvqa": (
    Layout(
      release="ST-VQA task 3 (the current RRC download)",
      files={"train": "train_task_3.json", "test_unlabelled": "test_task_3.json"},
      image=lambda r, _: str(r.get("file_path", "")),
      group=lambda r: str(r.get("file_path", "")),
      tree="train_task_3.json, test_task_3.json (train_task_{1,2}.json are not read)\n"
      "    <file_path of each record>, e.g. coco-text/COCO_train2014_000000000036.jpg",
      validation_from_train=True,
    ),
    Layout(
      release="ST-VQA / TextVQA converted to one file per split",
      files={"train": "train.json", "validation": "val.json", "test_unlabelled": "test.json"},
      image=lambda r, _: (
        str(r["file_path"]) if "file_path" in r else f"images/{r.get('image_id', '')}.jpg"
      ),
      group=lambda r: str(r.get("file_path", r.get("image_id", ""))),
      tree="{train,val,test}.json, images at each record's file_path or images/<image_id>.jpg",
    ),
  ),
  "textvqa": (
    Layout(
      release="TextVQA 0.5.1",
      files={
        "train": "TextVQA_0.5.1_train.json",
        "validation": "TextVQA_0.5.1_val.json",
        "test_unlabelled": "TextVQA_0.5.1_test.json",
      },
      image=lambda r, split: (
        f"{'test' if split == 'test_unlabelled' else 'train'}_images/{r.get('image_id', '')}.jpg"
      ),
      group=lambda r: str(r.get("image_id", "")),
      tree="TextVQA_0.5.1_{train,val,test}.json\n"
      "    train_images/<image_id>.jpg (train and val), test_images/<image_id>.jpg",
    ),
  ),
}


def layout_of(dataset: str, manual_dir: str) -> Layout:
  """The first of `dataset`'s layouts whose train or validation file is in manual_dir; refuses a
  folder holding none, showing every expected tree."""
  for layout in LAYOUTS[dataset]:
    labelled = [f for s, f in layout.files.items() if s != "test_unlabelled"]
    if any(os.path.isfile(os.path.join(manual_dir, f)) for f in labelled):
      return layout
  trees = "\n".join(f"  {layout.release}:\n    {layout.tree}" for layout in LAYOUTS[dataset])
  raise UserError(
    f"manual_dir {manual_dir} holds no question files of {dataset}; expected one of these "
    f"layouts (paths under manual_dir):\n{trees}\n(docs/datasets.md)."
  )


def _records(path: str) -> list[dict]:
  """The `data` list of a question file; refuses a file that is not one, naming it."""
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not a readable JSON question file: {e}") from None
  data = content.get("data") if isinstance(content, dict) else None
  if not isinstance(data, list) or not all(isinstance(d, dict) and "question" in d for d in data):
    raise UserError(f'{path} must hold {{"data": [{{"question": ..., "answers": [...], ...}}]}}.')
  return data


def _record_id(record: dict, index: int) -> str:
  for key in ("questionId", "question_id"):
    if key in record:
      return str(record[key])
  return str(index)


def _record_name(record: dict, index: int) -> str:
  """How an error names a record: its id where the file gives one, else its place in the file."""
  for key in ("questionId", "question_id"):
    if key in record:
      return f"question {key}={record[key]!r}"
  return f"question #{index} of the file"


def _check_inside(manual_dir: str, image: str, record: str) -> None:
  """An image path may not leave `manual_dir`, by `..`, an absolute path or a symlink: refused,
  naming the record, before any image is opened."""
  root = os.path.realpath(manual_dir)
  resolved = os.path.realpath(image)
  if os.path.commonpath([root, resolved]) != root:
    raise UserError(
      f"{record} names image {image!r}, which resolves to {resolved}, outside manual_dir {root}; "
      "images must lie inside manual_dir."
    )


def _questions(manual_dir: str, layout: Layout, split: str, path: str) -> list[Question]:
  """A question file's usable records (labelled splits: those with answers), every image checked."""
  labelled = split != "test_unlabelled"
  out = []
  for index, record in enumerate(_records(path)):
    answers = record.get("answers") or []
    if labelled and not answers:
      continue
    question_id = _record_id(record, index)
    image = os.path.join(manual_dir, layout.image(record, split))
    name = f"{path}, {_record_name(record, index)}"
    _check_inside(manual_dir, image, name)
    if not os.path.isfile(image):
      raise MissingPathError(f"{name} names image {image}, which is not there.")
    out.append(
      Question(
        question_id=question_id,
        question=str(record["question"]),
        answers=tuple(str(a) for a in answers) if labelled else (),
        image=image,
        group=layout.group(record),
      )
    )
  if labelled and not out:
    raise UserError(f"{path} holds no question with answers.")
  return out


def cut_by_group(
  questions: list[Question], share: float, what: str, seed: int = SPLIT_SEED, min_groups: int = 1
) -> tuple[list[Question], list[Question]]:
  """(taken, rest): `grouping.cut_by_group` of the questions by their group, in the file's order."""
  taken, rest = grouping.cut_by_group([q.group for q in questions], share, what, seed, min_groups)
  return [questions[i] for i in taken], [questions[i] for i in rest]


def read(dataset: str, manual_dir: str) -> dict[str, list[Question]]:
  """Every split of `dataset` in manual_dir: train, validation, its halves calibration and test
  (cut by group), and test_unlabelled where the release has one. Refuses, naming the file, a
  malformed question file, a missing image or one outside manual_dir. Writes nothing."""
  layout = layout_of(dataset, manual_dir)
  splits = {}
  for split, file in layout.files.items():
    path = os.path.join(manual_dir, file)
    if os.path.isfile(path):
      splits[split] = _questions(manual_dir, layout, split, path)
  if layout.validation_from_train and "train" in splits:
    splits["validation"], splits["train"] = cut_by_group(  # 2 images at least: it is halved
      splits["train"],
      STVQA_VALIDATION_SHARE,
      f"{layout.files['train']} into train and validation",
      min_groups=2,
    )
  if "validation" in splits:
    splits["calibration"], splits["test"] = cut_by_group(
      splits["validation"], 0.5, f"the validation questions of {dataset}"
    )
  return splits
