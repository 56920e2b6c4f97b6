"""Task metrics on hand-worked cases (each expected value is worked out in the comment beside it)."""

from __future__ import annotations

import pytest

from deed_jax.errors import UserError
from deed_jax.evaluation import metrics


def test_edit_distance():
  assert metrics.edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
  assert metrics.edit_distance("", "abc") == 3
  assert metrics.edit_distance("flaw", "lawn") == 2  # -f, +n
  assert metrics.edit_distance("same", "same") == 0


def test_exact_match():
  assert metrics.exact_match(" 2021-03-05 ", "2021-03-05") == 1.0  # surrounding spaces only
  assert metrics.exact_match("smith, john", "SMITH, John") == 0.0  # case counts
  assert metrics.exact_match("b", ["a", "b"]) == 1.0  # any answer


def test_anls_partial_matches_and_the_cut():
  # 1 edit over max length 10: 1 - 0.1.
  assert metrics.anls("0123456789", "0123456780") == pytest.approx(0.9)
  # Lowercased and whitespace-collapsed first: "total amount" both sides.
  assert metrics.anls("  Total   AMOUNT ", "total amount") == 1.0
  # "abcd" vs "abxy": 2 edits / 4 = 0.5, at the cut: 0.
  assert metrics.anls("abcd", "abxy") == 0.0
  # "abcde" vs "abxye": 2 / 5 = 0.4 < 0.5: 0.6.
  assert metrics.anls("abcde", "abxye") == pytest.approx(0.6)
  # The best answer counts: 0 against "zzzz", 0.75 against "abce" (1 / 4).
  assert metrics.anls("abcd", ["zzzz", "abce"]) == pytest.approx(0.75)
  assert metrics.anls("", "") == 1.0


def test_vqa_accuracy_counts_leave_one_out_subsets():
  ten = ["red"] * 3 + ["blue"] * 7
  # Leaving out one of the 3 "red": 2 others match -> 2/3 (3 subsets); leaving out a "blue":
  # 3 match -> 1 (7 subsets). (3 * 2/3 + 7) / 10 = 0.9.
  assert metrics.vqa_accuracy("red", ten) == pytest.approx(0.9)
  one = ["red"] + ["blue"] * 9
  # Leaving out the "red": 0; leaving out a "blue": 1/3 (9 subsets). 9 * 1/3 / 10 = 0.3.
  assert metrics.vqa_accuracy("red", one) == pytest.approx(0.3)
  assert metrics.vqa_accuracy("blue", one) == 1.0  # 8 or 9 others match everywhere
  assert metrics.vqa_accuracy("green", ten) == 0.0


def test_vqa_normalisation():
  # Number words become digits, articles go, case and punctuation do not matter.
  assert metrics.vqa_normalise("Two") == "2"
  assert metrics.vqa_normalise("The Dog!") == "dog"
  assert metrics.vqa_normalise("a red-car") == "red car"  # a hyphen inside a word: a space
  assert metrics.vqa_normalise("dont know") == "don't know"
  assert metrics.vqa_normalise("3.5") == "3.5"  # a decimal point stays
  assert metrics.vqa_normalise("yes.") == "yes"
  assert metrics.vqa_normalise("1,000") == "1000"  # a comma inside a number vanishes
  # So "two dogs" answered as "2 dogs" by three humans is fully right.
  assert metrics.vqa_accuracy("two dogs", ["2 dogs"] * 3 + ["dogs"] * 7) == pytest.approx(0.9)
  assert metrics.vqa_accuracy("The cat", ["cat"] * 10) == 1.0


def test_cer():
  assert metrics.cer("kitten", "sitting") == pytest.approx(3 / 7)
  assert metrics.cer("abc", "abc") == 0.0
  assert metrics.cer("abcdef", "ab") == pytest.approx(2.0)  # 4 insertions over 2 characters
  assert metrics.cer("", "") == 0.0


def test_bleu_through_sacrebleu():
  pytest.importorskip("sacrebleu")
  perfect = metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
  assert perfect == pytest.approx(100.0)
  # Shares no 4-gram with the reference: corpus BLEU is 0 without smoothing of the counts.
  assert metrics.bleu(["the cat sat"], ["a dog ran far away"]) == pytest.approx(0.0)
  # n-gram precisions against "the cat sat on the mat": 5/6, 3/5, 2/4, 1/3; same length, no brevity
  # penalty: (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 0.5373.
  partial = metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
  assert partial == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 2 * 1 / 3) ** 0.25, abs=1e-6)
  # With a second reference every n-gram of the hypothesis is found in one of them.
  assert metrics.bleu(
    ["the cat sat on a mat"], [["the cat sat on the mat", "a cat sat on a mat"]]
  ) == pytest.approx(100.0)
  with pytest.raises(UserError, match="2 predictions and 1 references"):
    metrics.bleu(["a", "b"], ["a"])


def test_corpus_score_and_unknown_metric():
  assert (
    metrics.corpus_score("exact_match", ["a", "b", "c", "d"], ["a", "x", "c", ["d", "e"]]) == 75.0
  )
  assert metrics.corpus_score("anls", ["abcde"], [["abxye"]]) == pytest.approx(60.0)
  with pytest.raises(UserError, match="'rouge'"):
    metrics.metric_fn("rouge")
  with pytest.raises(UserError, match="at least one reference"):
    metrics.exact_match("a", [])
