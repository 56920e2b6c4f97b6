"""Task metrics on decoded strings: plain functions of a prediction and its reference answers.

Per-example metrics return a score in [0, 1] (reports show them as 0..100):

- `exact_match(prediction, answers)`: 1 if the prediction equals one of the answers after stripping
  surrounding whitespace (case and inner spacing count: the forms task's answers are exact strings).
- `anls(prediction, answers)`: Average Normalized Levenshtein Similarity of DocVQA and ST-VQA. Both
  sides lowercased, stripped and their inner whitespace collapsed; per answer 1 - d / max(len) with
  d the edit distance, counted as 0 when the normalised distance is >= 0.5; the best answer counts.
- `vqa_accuracy(prediction, answers)`: VQAv2 accuracy over (usually 10) human answers, after the
  VQA answer normalisation (punctuation, number words to digits, articles dropped, common
  contractions restored): min(#other humans who gave the answer / 3, 1), averaged over the
  leave-one-out subsets of the human answers.
- `cer(prediction, reference)`: character error rate, edit distance / reference length (can be > 1).

Corpus metrics score a whole split at once: `bleu(predictions, references)` is sacrebleu's corpus
BLEU (0..100), imported when called.

`METRICS` (per example) and `CORPUS_METRICS` name the metrics a task config may ask for;
`check_metric(name)` refuses others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from deed_jax.errors import UserError

Answers = str | Sequence[str]


def _as_list(answers: Answers) -> list[str]:
  out = [answers] if isinstance(answers, str) else list(answers)
  if not out:
    raise UserError("A metric needs at least one reference answer; got none.")
  return out


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
  if len(a) < len(b):
    a, b = b, a
  previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
  for i, ca in enumerate(a, 1):
    current = [i]
    for j, cb in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
    previous = current
  return previous[-1]


def exact_match(prediction: str, answers: Answers) -> float:
  prediction = prediction.strip()
  return float(any(prediction == answer.strip() for answer in _as_list(answers)))


def _anls_normalise(text: str) -> str:
  return " ".join(text.lower().split())


def anls(prediction: str, answers: Answers, threshold: float = 0.5) -> float:
  prediction = _anls_normalise(prediction)
  best = 0.0
  for answer in _as_list(answers):
    answer = _anls_normalise(answer)
    longest = max(len(prediction), len(answer))
    distance = edit_distance(prediction, answer) / longest if longest else 0.0
    best = max(best, 0.0 if distance >= threshold else 1.0 - distance)
  return best


# VQA answer normalisation (the VQAv2 evaluation's rules, written out here).
_NUMBER_WORDS = {
  "none": "0",
  "zero": "0",
  "one": "1",
  "two": "2",
  "three": "3",
  "four": "4",
  "five": "5",
  "six": "6",
  "seven": "7",
  "eight": "8",
  "nine": "9",
  "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe, restored (a common subset of the official table).
_CONTRACTIONS = {
  "aint": "ain't",
  "arent": "aren't",
  "cant": "can't",
  "couldnt": "couldn't",
  "didnt": "didn't",
  "doesnt": "doesn't",
  "dont": "don't",
  "hadnt": "hadn't",
  "hasnt": "hasn't",
  "havent": "haven't",
  "hes": "he's",
  "im": "i'm",
  "isnt": "isn't",
  "itd": "it'd",
  "itll": "it'll",
  "ive": "i've",
  "lets": "let's",
  "shes": "she's",
  "shouldnt": "shouldn't",
  "thats": "that's",
  "theres": "there's",
  "theyre": "they're",
  "theyve": "they've",
  "wasnt": "wasn't",
  "werent": "weren't",
  "whats": "what's",
  "wheres": "where's",
  "whos": "who's",
  "wont": "won't",
  "wouldnt": "wouldn't",
  "youd": "you'd",
  "youll": "you'll",
  "youre": "you're",
  "youve": "you've",
}
_PUNCTUATION = [
  ";",
  "/",
  "[",
  "]",
  '"',
  "{",
  "}",
  "(",
  ")",
  "=",
  "+",
  "\\",
  "_",
  "-",
  ">",
  "<",
  "@",
  "`",
  ",",
  "?",
  "!",
]
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # a period that is not a decimal point
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def vqa_normalise(answer: str) -> str:
  """VQA's answer normalisation: punctuation removed (a mark next to a space or a comma inside a
  number vanishes, one inside a word becomes a space), periods that are not decimal points dropped,
  lowercased, number words as digits, articles dropped, contractions restored."""
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  for mark in _PUNCTUATION:
    if f"{mark} " in text or f" {mark}" in text or _COMMA_IN_NUMBER.search(text):
      text = text.replace(mark, "")
    else:
      text = text.replace(mark, " ")
  text = _PERIOD.sub("", text)
  words = []
  for word in text.lower().split():
    word = _NUMBER_WORDS.get(word, word)
    if word not in _ARTICLES:
      words.append(_CONTRACTIONS.get(word, word))
  return " ".join(words)


def vqa_accuracy(prediction: str, answers: Answers) -> float:
  answers = [vqa_normalise(a) for a in _as_list(answers)]
  prediction = vqa_normalise(prediction)
  if len(answers) == 1:
    return float(prediction == answers[0])
  scores = []
  for left_out in range(len(answers)):
    matches = sum(a == prediction for i, a in enumerate(answers) if i != left_out)
    scores.append(min(matches / 3.0, 1.0))
  return sum(scores) / len(scores)


def cer(prediction: str, reference: str) -> float:
  if not reference:
    return float(bool(prediction))
  return edit_distance(prediction, reference) / len(reference)


def bleu(predictions: Sequence[str], references: Sequence[Answers]) -> float:
  """Corpus BLEU with sacrebleu's defaults (13a tokenisation), 0..100. Each
  reference entry is one string or a list of them (all examples must have as many)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top

  if len(predictions) != len(references):
    raise UserError(f"bleu got {len(predictions)} predictions and {len(references)} references.")
  per_example = [_as_list(r) for r in references]
  count = {len(r) for r in per_example}
  if len(count) > 1:
    raise UserError(
      f"bleu needs as many references per example everywhere; got counts {sorted(count)}."
    )
  streams = [list(stream) for stream in zip(*per_example)]  # [references per example][examples]
  return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


# Per-example metrics a task config may name (scores averaged over examples, shown as 0..100);
# "bleu" is scored over the corpus.
METRICS: dict[str, Callable[[str, Answers], float]] = {
  "exact_match": exact_match,
  "anls": anls,
  "vqa_accuracy": vqa_accuracy,
  "cer": lambda prediction, answers: cer(prediction, _as_list(answers)[0]),
}
CORPUS_METRICS = {"bleu": bleu}
LOWER_IS_BETTER = frozenset({"cer"})  # an error rate: a drop in quality is a rise in it


def check_metric(name: str, where: str = "metric") -> None:
  """A clear error, naming `where` it came from, for a metric we do not have."""
  if name not in METRICS and name not in CORPUS_METRICS:
    raise UserError(f"Unknown {where} {name!r}; known: {sorted(METRICS) + sorted(CORPUS_METRICS)}.")


def metric_fn(name: str) -> Callable[[str, Answers], float]:
  """The per-example metric called `name`."""
  check_metric(name)
  if name not in METRICS:
    raise UserError(f"{name!r} is scored over a whole split (corpus_score), not per example.")
  return METRICS[name]


def corpus_score(name: str, predictions: Sequence[str], answers: Sequence[Answers]) -> float:
  """The metric `name` over a split, 0..100 (per-example metrics averaged)."""
  check_metric(name)
  if name in CORPUS_METRICS:
    return CORPUS_METRICS[name](predictions, answers)
  fn = metric_fn(name)
  if len(predictions) != len(answers):
    raise UserError(f"{name} got {len(predictions)} predictions and {len(answers)} answer lists.")
  if not predictions:
    raise UserError(f"{name} needs at least one example.")
  return 100.0 * sum(fn(p, a) for p, a in zip(predictions, answers)) / len(predictions)
