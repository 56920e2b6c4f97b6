"""Task metrics on decoded strings: plain functions of a prediction and its reference answers.

Per-example metrics return a score in [0, 1] (reports show them as 0..100):

- `exact_match(prediction, answers)`: 1 if the prediction equals one of the answers after stripping
  surrounding whitespace (case and inner spacing count: the forms task's answers are exact strings).
- `anls(prediction, answers)`: ANLS as the official DocVQA / InfographicVQA evaluation scores one
  question (ST-VQA's is the same): distance between the lowercased, stripped, whitespace-collapsed
  strings over the longer string as given, best answer, similarity below 0.5 counted 0.
- `vqa_accuracy(prediction, answers)`: the official VQA accuracy (VQA v2's evaluation, which EvalAI
  also runs for TextVQA): its answer processing, then min(1, other humans who gave the answer / 3)
  averaged over the leave-one-out subsets of the (usually 10) human answers.
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
  return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Answers, threshold: float = 0.5) -> float:
  """The DocVQA / InfographicVQA evaluation's ANLS of one question: per answer the normalised
  Levenshtein similarity 1 - d / max(len), with d counted between the lowercased, stripped,
  whitespace-collapsed strings but divided by the longer string as given; the best answer counts, and
  a similarity below `threshold` counts 0 (so exactly 0.5 counts 0.5)."""
  best = 0.0
  for answer in _as_list(answers):
    longest = max(len(prediction), len(answer))
    distance = edit_distance(_anls_normalise(prediction), _anls_normalise(answer))
    best = max(best, 1.0 - distance / longest if longest else 1.0)
  return best if best >= threshold else 0.0


# The official VQA evaluation's answer processing (VQA v2's vqaEval.py; EvalAI scores VQA v2 and
# TextVQA with it), table for table, including its quirks: keys with a capital letter ("Im", "Ive",
# "Id've") never match the lowercased words, "lets" is not mapped (only "let's" -> "let's"), and a
# period is stripped unless a digit follows it (so ".25" stays ".25": the lookbehind the evaluation
# meant to write is a lookahead).
_NUMBER_WORDS = dict(
  none="0", zero="0", one="1", two="2", three="3", four="4", five="5", six="6", seven="7",
  eight="8", nine="9", ten="10",
)  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# Word -> contraction, written "word=contraction" (the table of the official evaluation).
_CONTRACTIONS = dict(
  pair.split("=")
  for pair in """
  aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
  couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
  hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
  howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
  itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
  mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
  neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
  'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
  shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
  somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
  somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
  someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
  something'dve=something'd've somethingll=something'll thats=that's thered=there'd
  thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
  theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
  wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
  whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
  whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
  whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
  wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
  yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
  you'dve=you'd've youll=you'll youre=you're youve=you've
  """.split()
)
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit
_PERIODS_STRIPPED = 32  # the evaluation passes re.UNICODE (32) as re.sub's count
_COMMA_IN_NUMBER = re.compile(r"\d,\d")


def vqa_normalise(answer: str) -> str:
  """The official VQA answer processing: whitespace, then punctuation (each mark is removed where
  it stands next to a space in the input or a comma sits inside a number in it, else it becomes a
  space), periods not followed by a digit removed, then lowercased words with number words as
  digits, articles dropped and contractions restored."""
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  out = text
  for mark in _PUNCTUATION:
    joined = f"{mark} " in text or f" {mark}" in text or _COMMA_IN_NUMBER.search(text)
    out = out.replace(mark, "" if joined else " ")
  out = _PERIOD.sub("", out, count=_PERIODS_STRIPPED)
  words = [_NUMBER_WORDS.get(word, word) for word in out.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Answers) -> float:
  """The official VQA accuracy of one question: prediction and every human answer processed
  (`vqa_normalise`), then min(1, matches among the other answers / 3) averaged over the
  leave-one-out subsets. The same formula for any number of answers; one answer is refused (it
  would score every prediction 0: score such data with anls or exact_match)."""
  answers = [vqa_normalise(a) for a in _as_list(answers)]
  if len(answers) < 2:
    raise UserError(
      f"vqa_accuracy needs at least 2 human answers per question (got {answers!r}): the "
      "leave-one-out formula scores a single answer 0. Use anls or exact_match for such data."
    )
  prediction = vqa_normalise(prediction)
  matches = sum(a == prediction for a in answers)
  # Leaving out a matching answer leaves matches - 1 others that match, any other leaves matches.
  left_out = [min(1.0, (matches - (a == prediction)) / 3.0) for a in answers]
  return sum(left_out) / len(answers)


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
