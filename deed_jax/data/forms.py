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

The prompted variant leaves the header row blank and gives the question to the decoder instead, as
a prompt in Donut's DocVQA format (`prompt_text`: "<s_forms><s_question>phone</s_question><s_answer>",
with the task tokens `TASK_TOKENS` added to the tokenizer), so a local run trains, validates, decodes
and calibrates through the same prompted path as Donut on DocVQA. The asked row is still drawn
inverted, so the prompt repeats what the image shows: the variant exercises the path, not a harder
task.

Two styles. `plain`: the answer is the value as drawn; a model learns to read it so well that its
first decoder exit is as good as its last (the local run reached 99.6-100% exact match at every exit),
which hides what early exits trade. `normalised` makes some answers need more than copying glyphs in
order: a date drawn "Jan 9, 2025" is answered "2025-01-09" (month name to digits, the day padded, the
parts reordered), a name drawn "Norma Fisher" is answered "Fisher, Norma", a phone number drawn
"475 693 8242" is answered "4756938242"; other fields are read as drawn, and nine questions in ten
(HARD_QUESTION_SHARE, when the form has such a field) ask for one of these. Where the output must
jump around in the drawn text, or its position no longer lines up with the drawn one, shallow exits
fail more often. Trial runs of the local config (1200 steps): with a 4-layer decoder, zero-padded
days ("Jan 09 2025") and one question in two on these fields, exit 1 reached 84% exact match against
98% at the last exit; unpadded days and three in four, 79-83% against 95-97% (a gap of 12-18
points, varying between runs); nine in ten with 8 and 10 decoder layers, 3-31% against 94-97%.
"""

from __future__ import annotations

import dataclasses
import datetime
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

# Dates are drawn from a fixed range by the form's seeded generator. (faker's own date() draws up to
# "now", so the same seed could give another date when drawn later: datasets generated hours apart
# differed in about one example in twenty.)
FIRST_DATE, LAST_DATE = datetime.date(1970, 1, 1), datetime.date(2025, 12, 31)


def _date(f: Faker) -> str:
  """A date in [FIRST_DATE, LAST_DATE] as YYYY-MM-DD, a function of the generator's seed alone."""
  return (
    FIRST_DATE + datetime.timedelta(days=f.random.randint(0, (LAST_DATE - FIRST_DATE).days))
  ).isoformat()


# Label -> how faker produces its value. Values longer than MAX_VALUE_LENGTH are redrawn.
FIELD_GENERATORS = {
  "name": lambda f: f.name(),
  "city": lambda f: f.city(),
  "date": _date,
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


STYLES = ("plain", "normalised")
# Donut's task tokens for this task (the DocVQA ones, with the task's own start token).
TASK_TOKENS = ("<s_forms>", "<s_question>", "</s_question>", "<s_answer>")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
NORMALISED_LABELS = ("date", "name", "phone")
# In the normalised style, the share of questions that ask for a rewritten field when the form has one.
HARD_QUESTION_SHARE = 0.9


def drawn_and_answer(label: str, value: str, style: str) -> tuple[str, str]:
  """How a field's value is drawn and how it is answered. `value` is faker's: a date as YYYY-MM-DD,
  a name as "First [Middle] Last", a phone number as ###-###-####."""
  if style == "plain" or label not in NORMALISED_LABELS:
    return value, value
  if label == "date":
    year, month, day = value.split("-")
    return f"{MONTHS[int(month) - 1]} {int(day)}, {year}", value
  if label == "name":
    *first, last = value.split()
    return value, f"{last}, {' '.join(first)}"
  return value.replace("-", " "), value.replace("-", "")  # phone


@dataclasses.dataclass(frozen=True)
class Form:
  fields: tuple[tuple[str, str], ...]  # (label, faker's value) in the order drawn
  question: str  # the label asked for
  style: str = "plain"

  @property
  def answer(self) -> str:
    return drawn_and_answer(self.question, dict(self.fields)[self.question], self.style)[1]

  def lines(self) -> list[str]:
    drawn = [(label, drawn_and_answer(label, value, self.style)[0]) for label, value in self.fields]
    return [f"? {self.question}"] + [f"{label:<{LABEL_WIDTH}}: {value}" for label, value in drawn]


@functools.cache
def _faker() -> Faker:
  return Faker("en_US")


def make_form(seed: int, style: str = "plain") -> Form:
  """A form fully determined by `seed` and `style` (labels, their order, values and the question).
  Values whose drawn form or answer is longer than MAX_VALUE_LENGTH are redrawn."""
  if style not in STYLES:
    raise ValueError(f"Unknown form style {style!r}; styles: {STYLES}.")
  rng = random.Random(seed)
  faker = _faker()
  faker.seed_instance(seed)
  labels = rng.sample(sorted(FIELD_GENERATORS), FIELDS_PER_FORM)
  fields = []
  fits = lambda label, value: (
    value.isascii()
    and all(len(v) <= MAX_VALUE_LENGTH for v in drawn_and_answer(label, value, style))
  )
  for label in labels:
    value = FIELD_GENERATORS[label](faker)
    while not fits(label, value):
      value = FIELD_GENERATORS[label](faker)
    fields.append((label, value))
  question = rng.choice(labels)
  if style == "normalised":
    hard = [label for label in labels if label in NORMALISED_LABELS]
    if hard and rng.random() < HARD_QUESTION_SHARE:
      question = rng.choice(hard)
  return Form(tuple(fields), question=question, style=style)


@functools.cache
def _font() -> ImageFont.ImageFont:
  return ImageFont.load_default_imagefont()


# The longest prompt in tokens: four task tokens and the longest label's bytes.
MAX_PROMPT_TOKENS = len(TASK_TOKENS) + max(len(label) for label in FIELD_GENERATORS)


def prompt_text(question: str) -> str:
  """The decoder prompt of the prompted variant, in Donut's DocVQA format."""
  return f"<s_forms><s_question>{question}</s_question><s_answer>"


def render_form(form: Form, question_row: bool = True) -> np.ndarray:
  """Draw the form: uint8 [60, 126, 3], black glyphs on white, one character per 12x6 cell; the
  asked field's row is drawn inverted (white on black). Without `question_row` the header row is
  left blank (the prompted variant)."""
  height, width = IMAGE_SIZE
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  asked_row = 1 + [label for label, _ in form.fields].index(form.question)
  for row, line in enumerate(form.lines()):
    if row == 0 and not question_row:
      continue
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
