"""An independent, straightforward beam search: Python lists, one row at a time, the model's full
forward over every beam's whole prefix at each step, Hugging Face's beam rules written out (those of
transformers 4.57's `_beam_search`, the version the conversion tests compare with).

Each beam takes its log-probs from its own first confident exit (threshold > 1: the last layer). The
confidences are recomputed here in NumPy float64: max_prob, CALM's state saturation (1 + cos) / 2
between a layer's output and its input, or the exit classifier written out from its parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from deed_jax.decoding.reference import copied_state_pass


class BeamResult(NamedTuple):
  pools: list  # per row: [(score, tokens, exit_layers, confidences)], best first
  layers_run: list[int]  # per step: the deepest exit among the beams of rows still running
  row_steps: list[int]  # per row: steps run before the row was done


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def constrained(log_probs, sequence, new, config):
  """HF's generation constraints written out on lists (transformers 4.57's processors, in their
  order) for one beam: log_probs [L, V] of every exit, `sequence` the beam's decoder sequence so far
  (prompt included), `new` the tokens it generated; `config` a DecodeConfig. -> [L, V]."""
  scores = np.array(log_probs, np.float64)
  banned = set()
  n = config.no_repeat_ngram_size
  if n and len(sequence) + 1 >= n:
    seen = {}
    for s in range(len(sequence) - n + 1):
      seen.setdefault(tuple(sequence[s : s + n - 1]), []).append(sequence[s + n - 1])
    banned |= set(seen.get(tuple(sequence[len(sequence) - n + 1 :]), []))
  for word in config.bad_words_ids or ():
    if list(word) == [config.eos_id]:
      continue
    if len(word) == 1 or (
      len(word) <= len(sequence) and sequence[-(len(word) - 1) :] == list(word[:-1])
    ):
      banned.add(word[-1])
  if new < config.min_new_tokens:
    banned.add(config.eos_id)
  scores[:, sorted(banned)] = -np.inf
  for token, now in ((config.forced_bos_id, len(sequence) == 1),
                     (config.forced_eos_id, new == config.max_new_tokens - 1)):  # fmt: skip
    if token is not None and now:
      scores[:] = -np.inf
      scores[:, token] = 0.0
  return scores


def _add(pool, hypothesis, num_beams):
  """HF BeamHypotheses.add: keep the num_beams best; a newcomer must beat the worst strictly."""
  worst = min(h[0] for h in pool) if pool else None
  if len(pool) < num_beams or hypothesis[0] > worst:
    pool.append(hypothesis)
    if len(pool) > num_beams:
      pool.remove(min(pool, key=lambda h: h[0]))


def classifier_probabilities(model, features):
  """The exit classifier of `model` on exit features [L, ..., D], in NumPy float64 -> [L, ...]."""
  probe = model.decoder.exit_classifier
  x = np.asarray(features, np.float64)
  weight = lambda name: np.asarray(getattr(probe, name)[...], np.float64)
  layers = range(x.shape[0])
  if model.config.exit_classifier == "mlp":
    x = np.stack(
      [np.maximum(x[l] @ weight("hidden")[l] + weight("hidden_bias")[l], 0.0) for l in layers]
    )
  logit = np.stack([x[l] @ weight("kernel")[l] + weight("bias")[l] for l in layers])
  return 1.0 / (1.0 + np.exp(-logit))


def _confidences(log_probs, states, features, kind, model):
  """[L, K, V] log-probs, [L + 1, K, D] layer states, [L, K, D] exit features -> [L, K]."""
  if kind == "max_prob":
    return np.exp(log_probs).max(-1)
  if kind == "classifier":
    return classifier_probabilities(model, features)
  assert kind == "state", kind
  a, b = states[1:].astype(np.float64), states[:-1].astype(np.float64)
  cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  return (1.0 + cos) / 2.0


def beam_search(
  model,
  encoder_inputs,
  *,
  num_beams,
  max_new_tokens,
  eos_id,
  length_penalty=1.0,
  early_stopping=False,
  threshold=2.0,
  min_exit_layer=1,
  allowed_exit_layers=None,
  confidence="max_prob",
  copy_states=False,
  prompt=None,
  constraints=None,
):
  """-> BeamResult: per row, the pool sorted best first: [(score, tokens, exit_layers, confidences)];
  per step, the deepest exit any beam of a still-running row took ([max_new_tokens] ints, 0 once every
  row is done: the layers a batched decoder must run at that step, no more); per row, the steps it
  ran before it was done.

  `copy_states` (CALM's copy mode): each beam's earlier positions feed the layers above their exit
  K/V projected from their exit state, through the naive reference's copied-state forward.

  `prompt`: each row's decoder prefix (token-id lists with the start token; None: the start token
  alone); its beams continue it, and row b's step p reads position P_b - 1 + p. `constraints`: a
  resolved DecodeConfig whose generation constraints apply (`constrained`); confidences then read
  the constrained log-probs renormalised."""
  cfg = model.config
  k, n = num_beams, max_new_tokens
  batch = len(next(iter(encoder_inputs.values())))
  prompts = [[cfg.bos_id]] * batch if prompt is None else [list(row) for row in prompt]
  width = max(map(len, prompts)) + n - 1  # every row's prefix, padded

  # Prefixes are padded to `width`: causal attention makes a position's logits those of the prefix
  # alone, and one compiled forward serves every step.
  @jax.jit
  def forward(inputs, prefix):  # -> [L, K, N, V], [L + 1, K, N, D], [L, K, N, D]
    features, states = model.exit_features(inputs, prefix, return_states=True)
    return model.logits(features), states, features

  @jax.jit
  def copied_forward(inputs, prefix, t, exit_layers, exit_states):  # -> the same at t
    states, features = copied_state_pass(
      model, prefix, t, exit_layers, exit_states, *model.encode(inputs)
    )
    return model.logits(features), states, features

  def may_exit(layer):  # 0-based
    return layer >= min_exit_layer - 1 and (
      allowed_exit_layers is None or layer + 1 in allowed_exit_layers
    )

  pools, layers_run, row_steps = [], [0] * max_new_tokens, []
  for b in range(batch):
    row_inputs = {
      name: np.repeat(value[b : b + 1], k, axis=0) for name, value in encoder_inputs.items()
    }
    start = len(prompts[b]) - 1  # the position step 0 reads
    # (sum of log-probs, tokens, exit layers, confidences)
    beams = [(0.0, [], [], [])] + [(-1e9, [], [], [])] * (k - 1)
    states = [
      np.zeros((width, cfg.d_model), np.float32)
    ] * k  # per beam: each position's exit state
    pool, done = [], False
    for p in range(n):
      prefixes = np.array(
        [prompts[b] + beam[1] + [cfg.pad_id] * (width - start - 1 - p) for beam in beams], np.int32
      )  # [K, width]
      if copy_states:  # prompt positions keep their own states at every layer
        taken = np.array(
          [[cfg.decoder_layers] * start + beam[2] + [0] * (width - start - p) for beam in beams],
          np.int32,
        )  # [K, width]
        logits, hidden, features = map(
          np.asarray, copied_forward(row_inputs, prefixes, start + p, taken, np.stack(states))
        )
      else:  # [L, K, V], [L + 1, K, D], [L, K, D] at the step's position
        logits, hidden, features = (
          np.asarray(x)[:, :, start + p] for x in forward(row_inputs, prefixes)
        )
      log_probs = _log_softmax(logits.astype(np.float64))
      allowed = log_probs
      if constraints is not None:
        log_probs = np.stack(
          [constrained(log_probs[:, i], prompts[b] + beam[1], p, constraints)
           for i, beam in enumerate(beams)], axis=1)  # fmt: skip
        with np.errstate(invalid="ignore"):
          allowed = _log_softmax(log_probs)
      confidences = _confidences(allowed, hidden, features, confidence, model)  # [L, K]
      candidates = []
      for i, (score, _tokens, _exits, _confs) in enumerate(beams):
        layer = next(
          (l for l in range(cfg.decoder_layers) if may_exit(l) and confidences[l, i] >= threshold),
          cfg.decoder_layers - 1,
        )
        layers_run[p] = max(layers_run[p], layer + 1)
        for token in range(cfg.vocab_size):
          candidates.append(
            (score + log_probs[layer, i, token], i, token, layer + 1, confidences[layer, i])
          )
      candidates.sort(key=lambda c: -c[0])  # stable: ties keep (beam, token) order
      new_beams, new_states = [], []
      for rank, (score, i, token, layer, conf) in enumerate(candidates[: 2 * k]):
        _, tokens, exits, confs = beams[i]
        extended = (tokens + [token], exits + [layer], confs + [conf])
        if token == eos_id:
          if rank < k:
            _add(pool, (score / (p + 1) ** length_penalty,) + extended, k)
        else:
          new_beams.append((score,) + extended)
          new_states.append(states[i].copy())
          if copy_states:
            new_states[-1][start + p] = hidden[layer, i]  # the exit layer's output (1-based)
        if len(new_beams) == k:
          break
      beams, states = new_beams, new_states
      if len(pool) >= k:  # HF 4.57: can the best running beam, at its current length, still win?
        best_possible = beams[0][0] / (p + 1) ** length_penalty
        done = early_stopping or min(h[0] for h in pool) >= best_possible
      if done:
        break
    row_steps.append(p + 1)
    if not done:
      for score, tokens, exits, confs in beams:
        _add(pool, (score / n**length_penalty, tokens, exits, confs), k)
    pools.append(sorted(pool, key=lambda h: -h[0]))
  return BeamResult(pools, layers_run, row_steps)
