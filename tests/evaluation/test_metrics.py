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


def test_anls_as_the_official_docvqa_evaluation():
  # 1 edit over max length 10: 1 - 0.1.
  assert metrics.anls("0123456789", "0123456780") == pytest.approx(0.9)
  # Lowercased, stripped and whitespace-collapsed for the distance: "total amount" both sides.
  assert metrics.anls("  Total   AMOUNT ", "total amount") == 1.0
  # "abcd" vs "abxy": 2 edits / 4 = similarity 0.5, not below the cut: counts 0.5.
  assert metrics.anls("abcd", "abxy") == pytest.approx(0.5)
  # "abcde" vs "abxyz": 3 / 5, similarity 0.4 < 0.5: 0.
  assert metrics.anls("abcde", "abxyz") == 0.0
  # Divided by the longer string as given: "abc  " (5 characters) vs "abd" is 1 edit after
  # stripping, over 5, not over 3: 0.8 (cleaned lengths would give 0.667).
  assert metrics.anls("abc  ", "abd") == pytest.approx(0.8)
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
  # Fewer than 10 answers, the same formula: leaving out a "red" leaves 1 match (1/3, twice), the
  # "blue" leaves 2 (2/3): (1/3 + 1/3 + 2/3) / 3 = 4/9.
  assert metrics.vqa_accuracy("red", ["red", "red", "blue"]) == pytest.approx(4 / 9)
  # One answer: the formula would score everything 0, so it is refused.
  with pytest.raises(UserError, match="at least 2 human answers"):
    metrics.vqa_accuracy("red", ["red"])
  # Every answer equal and the prediction differing only in processing: still processed (no
  # exact-match shortcut): "The Cat." -> "cat".
  assert metrics.vqa_accuracy("The Cat.", ["cat"] * 10) == 1.0


def test_vqa_processing_as_the_official_evaluation():
  # Number words become digits, articles go, case and punctuation do not matter.
  assert metrics.vqa_normalise("Two") == "2"
  assert metrics.vqa_normalise("The Dog!") == "dog"
  assert metrics.vqa_normalise("a red-car") == "red car"  # a hyphen inside a word: a space
  assert metrics.vqa_normalise("dont know") == "don't know"
  assert metrics.vqa_normalise("3.5") == "3.5"  # a decimal point stays
  assert metrics.vqa_normalise("yes.") == "yes"
  # A comma inside a number anywhere: every mark is removed, not spaced.
  assert metrics.vqa_normalise("1,000 t-shirts") == "1000 tshirts"
  # The table's own entries: "whats" and "shouldve" are restored; "Im" is a key with a capital
  # letter the lowercased words never match, and "lets" is no key (only "let's").
  assert metrics.vqa_normalise("whats that") == "what's that"
  assert metrics.vqa_normalise("shouldve") == "should've"
  assert metrics.vqa_normalise("im here") == "im here"
  assert metrics.vqa_normalise("lets go") == "lets go"
  # A period is stripped unless a digit follows it: ".25" stays, so it does not match "25".
  assert metrics.vqa_normalise(".25") == ".25"
  assert metrics.vqa_accuracy(".25", ["25"] * 10) == 0.0
  # Whether a mark is removed or spaced is decided on the input: "(-y z-w" has no " -" or "- "
  # before "(" is spaced, so both hyphens become spaces (deciding on the running text would find
  # " -" and join "zw").
  assert metrics.vqa_normalise("(-y z-w") == "y z w"
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
  assert metrics.corpus_score("anls", ["abcde"], [["abxye"]]) == pytest.approx(60.0)  # 2 / 5
  with pytest.raises(UserError, match="'rouge'"):
    metrics.metric_fn("rouge")
  with pytest.raises(UserError, match="at least one reference"):
    metrics.exact_match("a", [])
