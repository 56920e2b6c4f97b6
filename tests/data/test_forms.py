"""The embedded forms task: reproducible, and the answer is only in the pixels."""

from __future__ import annotations

import dataclasses
import datetime

import faker.providers.date_time as faker_dates
import numpy as np

from deed_jax.data import forms


def test_forms_are_reproducible_and_varied():
  assert forms.make_form(7) == forms.make_form(7)
  np.testing.assert_array_equal(
    forms.render_form(forms.make_form(7)), forms.render_form(forms.make_form(7))
  )
  many = [forms.make_form(seed) for seed in range(200)]
  assert len({f.answer for f in many}) > 150
  assert len({f.question for f in many}) == len(forms.FIELD_GENERATORS)
  for form in many:
    assert len(form.fields) == forms.FIELDS_PER_FORM
    assert len({label for label, _ in form.fields}) == forms.FIELDS_PER_FORM
    assert form.question in dict(form.fields)
    assert all(len(line) <= forms.COLUMNS for line in form.lines())
    assert 1 <= len(form.answer) <= forms.MAX_VALUE_LENGTH


def test_forms_do_not_depend_on_the_day_they_are_generated(monkeypatch):
  # faker's own date() draws up to "now": datasets generated hours apart differed.
  today = [forms.make_form(seed, "normalised") for seed in range(100)]
  dates = [dict(form.fields)["date"] for form in today if "date" in dict(form.fields)]
  assert len(dates) >= 10

  class Tomorrow(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
      return datetime.datetime.now(tz) + datetime.timedelta(days=1)

  monkeypatch.setattr(faker_dates, "datetime", Tomorrow)
  assert [forms.make_form(seed, "normalised") for seed in range(100)] == today
  assert all(forms.FIRST_DATE.isoformat() <= d <= forms.LAST_DATE.isoformat() for d in dates)


def test_image_shape_and_the_answer_is_drawn_in_its_row():
  form = forms.make_form(3)
  pixels = forms.render_form(form)
  assert pixels.shape == forms.IMAGE_SIZE + (3,) and pixels.dtype == np.uint8
  row = 1 + [label for label, _ in form.fields].index(form.question)
  other_value = (
    "X" * len(form.answer) if form.answer != "X" * len(form.answer) else "Y" * len(form.answer)
  )
  changed = dataclasses.replace(
    form,
    fields=tuple(
      (label, other_value if label == form.question else value) for label, value in form.fields
    ),
  )
  diff = np.abs(forms.render_form(changed).astype(int) - pixels.astype(int)).sum(axis=(1, 2))  # [H]
  rows_changed = {y // forms.CELL_HEIGHT for y in np.nonzero(diff)[0]}
  assert rows_changed == {row}


def test_only_the_asked_row_is_highlighted():
  for seed in range(5):
    form = forms.make_form(seed)
    pixels = forms.render_form(form)
    row_darkness = [
      255 - pixels[r * forms.CELL_HEIGHT : (r + 1) * forms.CELL_HEIGHT].mean()
      for r in range(forms.ROWS)
    ]
    asked = 1 + [label for label, _ in form.fields].index(form.question)
    assert [r for r, d in enumerate(row_darkness) if d > 128] == [asked]


def test_question_is_drawn_in_the_header_row():
  form = forms.make_form(11)
  other = next(label for label, _ in form.fields if label != form.question)
  diff = np.abs(
    forms.render_form(dataclasses.replace(form, question=other)).astype(int)
    - forms.render_form(form).astype(int)
  ).sum(axis=(1, 2))
  rows = [label for label, _ in form.fields]
  moved_highlight = {1 + rows.index(form.question), 1 + rows.index(other)}
  assert {y // forms.CELL_HEIGHT for y in np.nonzero(diff)[0]} == {0} | moved_highlight


def test_text_variant_holds_question_and_fields():
  form = forms.make_form(5)
  text = forms.form_as_text(form)
  assert text.startswith(f"? {form.question} | ")
  assert all(value in text for _, value in form.fields)


def test_normalised_answers_by_hand():
  style = "normalised"
  assert forms.drawn_and_answer("date", "2021-03-05", style) == ("Mar 5, 2021", "2021-03-05")
  assert forms.drawn_and_answer("date", "1999-12-31", style) == ("Dec 31, 1999", "1999-12-31")
  assert forms.drawn_and_answer("name", "Norma Fisher", style) == ("Norma Fisher", "Fisher, Norma")
  assert forms.drawn_and_answer("name", "Ann M Lee", style) == ("Ann M Lee", "Lee, Ann M")
  assert forms.drawn_and_answer("phone", "475-693-8242", style) == ("475 693 8242", "4756938242")
  assert forms.drawn_and_answer("city", "Lake Dana", style) == ("Lake Dana", "Lake Dana")
  assert forms.drawn_and_answer("date", "2021-03-05", "plain") == ("2021-03-05", "2021-03-05")


def test_normalised_forms_draw_one_value_and_answer_another():
  many = [forms.make_form(seed, "normalised") for seed in range(400)]
  asked = [f.question for f in many]
  # Three questions in four go to a normalised field when the form has one.
  with_hard = [f for f in many if set(dict(f.fields)) & set(forms.NORMALISED_LABELS)]
  share = np.mean([f.question in forms.NORMALISED_LABELS for f in with_hard])
  assert 0.7 < share < 0.95 and set(asked) - set(forms.NORMALISED_LABELS)  # plain fields asked too
  for form in many:
    drawn_row = form.lines()[1 + [label for label, _ in form.fields].index(form.question)]
    drawn = drawn_row.split(": ", 1)[1]
    assert 1 <= len(form.answer) <= forms.MAX_VALUE_LENGTH
    assert all(len(line) <= forms.COLUMNS for line in form.lines())
    if form.question in forms.NORMALISED_LABELS:
      assert form.answer != drawn  # the answer is not a copy of what is drawn
    else:
      assert form.answer == drawn
  # The plain style is the default.
  assert forms.make_form(0) == forms.make_form(0, "plain")
