"""Synthetic forms: several `faker` fields on a card, a question naming one field, its value as answer.

A form is drawn on a monospace character grid (Pillow's built-in 6x11 bitmap font, one glyph per
12x6-pixel cell) so that a (12, 6) patch holds exactly one character. The question is drawn into the
image's first row (as Pix2Struct renders questions as headers), so the image alone carries the task:
the model has to find the named label and read the value next to it from the pixels.

    ? phone
    city   : Lake Dana
    phone  : 475-693-8242      <- drawn inverted
    color  : Chocolate
    name   : Norma Fisher

The row of the asked field is drawn inverted (white on black). Without that cue the model has to match
the header's label against the row labels before it can read, and on 2 CPU cores that did not train
in time: after 1000 steps (batch 32) the final exit's token accuracy was 0.39 and exact match 0%, while
with the highlight it reached 0.97 token accuracy after 600 steps. The answer still has to be read
glyph by glyph from the pixels.

The same form can be written as text (`form_as_text`) for the text-to-text variant of the task.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import random

import numpy as np
from faker import Faker
from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 7  # Labels are padded to this width, then ": ".
MAX_VALUE_LENGTH = 12
COLUMNS = LABEL_WIDTH + 2 + MAX_VALUE_LENGTH  # 21
CELL_HEIGHT, CELL_WIDTH = 12, 6
FIELDS_PER_FORM = 4
ROWS = 1 + FIELDS_PER_FORM  # The question row, then the fields.
IMAGE_SIZE = (ROWS * CELL_HEIGHT, COLUMNS * CELL_WIDTH)  # (60, 126)
PATCH_SIZE = (CELL_HEIGHT, CELL_WIDTH)

# Label -> how faker produces its value. Values longer than MAX_VALUE_LENGTH are redrawn.
FIELD_GENERATORS = {
    "name": lambda f: f.name(),
    "city": lambda f: f.city(),
    "date": lambda f: f.date(),
    "phone": lambda f: f.numerify("###-###-####"),
    "zip": lambda f: f.postcode(),
    "job": lambda f: f.job(),
    "company": lambda f: f.company(),
    "country": lambda f: f.country(),
    "color": lambda f: f.color_name(),
    "street": lambda f: f.street_name(),
    "plate": lambda f: f.license_plate(),
    "user": lambda f: f.user_name(),
}


@dataclasses.dataclass(frozen=True)
class Form:
  fields: tuple[tuple[str, str], ...]  # (label, value) in the order drawn
  question: str  # the label asked for

  @property
  def answer(self) -> str:
    return dict(self.fields)[self.question]

  def lines(self) -> list[str]:
    return [f"? {self.question}"] + [f"{label:<{LABEL_WIDTH}}: {value}" for label, value in self.fields]


@functools.cache
def _faker() -> Faker:
  return Faker("en_US")


def make_form(seed: int) -> Form:
  """A form fully determined by `seed` (labels, their order, values and the question)."""
  rng = random.Random(seed)
  faker = _faker()
  faker.seed_instance(seed)
  labels = rng.sample(sorted(FIELD_GENERATORS), FIELDS_PER_FORM)
  fields = []
  for label in labels:
    value = FIELD_GENERATORS[label](faker)
    while len(value) > MAX_VALUE_LENGTH or not value.isascii():
      value = FIELD_GENERATORS[label](faker)
    fields.append((label, value))
  return Form(tuple(fields), question=rng.choice(labels))


@functools.cache
def _font() -> ImageFont.ImageFont:
  return ImageFont.load_default_imagefont()


def render_form(form: Form) -> np.ndarray:
  """Draw the form: uint8 [60, 126, 3], black glyphs on white, one character per 12x6 cell; the
  asked field's row is drawn inverted (white on black)."""
  height, width = IMAGE_SIZE
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  asked_row = 1 + [label for label, _ in form.fields].index(form.question)
  for row, line in enumerate(form.lines()):
    ink = "black"
    if row == asked_row:
      draw.rectangle((0, row * CELL_HEIGHT, width - 1, (row + 1) * CELL_HEIGHT - 1), fill="black")
      ink = "white"
    for column, char in enumerate(line):
      draw.text((column * CELL_WIDTH, row * CELL_HEIGHT), char, fill=ink, font=_font())
  return np.asarray(image)


def png_bytes(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def form_as_text(form: Form) -> str:
  """The text-to-text variant: the same question and fields on one line."""
  return " | ".join(form.lines())
