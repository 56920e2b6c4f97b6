"""Per-exit validation metrics: teacher-forced token accuracy and greedy exact match at every exit.

Exact match decodes greedily with the naive reference decoder at a fixed exit l = 1..L and compares
the tokens up to and including EOS with the target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deed_jax import sharding
from deed_jax.decoding.reference import greedy_encoded_at_exit
from deed_jax.exit_metrics import exit_metrics
from deed_jax.models import encoder_inputs


def answer_targets(
  targets: jax.Array, target_mask: jax.Array, prompt_length: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """A batch's targets [B, T] and mask [B, T] from each row's first new token on: shifted left past
  the row's prompt (prompt_length [B]; 1: the start token alone, nothing to shift), as decoding
  returns its new tokens."""
  width = targets.shape[1]
  index = prompt_length[:, None] - 1 + jnp.arange(width)[None, :]  # [B, T]
  inside = index < width
  index = jnp.minimum(index, width - 1)
  shifted = jnp.take_along_axis(targets, index, axis=1)
  return shifted, jnp.take_along_axis(target_mask, index, axis=1) * inside


def exact_match(tokens: jax.Array, targets: jax.Array, target_mask: jax.Array) -> jax.Array:
  """[B, N] decoded, [B, T] targets (ending in EOS; `answer_targets` of a prompted batch) -> [B]
  bool: equal on every target position."""
  length = min(tokens.shape[1], targets.shape[1])
  tokens, targets, target_mask = tokens[:, :length], targets[:, :length], target_mask[:, :length]
  return jnp.all((tokens == targets) | (target_mask == 0), axis=-1)


def make_eval_fn(
  graphdef: nnx.GraphDef,
  max_new_tokens: int,
  num_samples: int = 0,
  param_shardings=None,
  batch_sharding: jax.sharding.NamedSharding | None = None,
):
  """-> jitted fn(params, batch) -> dict of sums over the batch's valid rows (`valid`: int32 [B]),
  and the targets [S, T] and decoded tokens [L, S, N] of its first S = `num_samples` rows.

  With `param_shardings` and `batch_sharding` it runs on their mesh, the batch split over its rows;
  everything it returns is replicated (small), so every process can read it."""

  def eval_batch(params, batch):
    model = nnx.merge(graphdef, params)
    valid = batch["valid"].astype(jnp.float32)  # [B]; 0 on rows padding the last batch
    mask = batch["target_mask"] * batch["valid"][:, None]
    # The encoder runs once for every metric and exit.
    encoder_out, encoder_mask = model.encode(encoder_inputs(batch))  # [B, S, D], [B, S]
    exits = exit_metrics(model, {**batch, "target_mask": mask}, encoded=(encoder_out, encoder_mask))
    num_tokens = mask.sum()
    cfg = model.config
    lengths = batch["prompt_length"]  # [B]
    targets, target_mask = answer_targets(batch["targets"], batch["target_mask"], lengths)
    layout = (batch["decoder_input_ids"], lengths)  # each row's prompt, then what is never read

    def exact_at(exit_layer):
      tokens = greedy_encoded_at_exit(
        model, encoder_out, encoder_mask, exit_layer, max_new_tokens, prompt_layout=layout
      )
      return (exact_match(tokens, targets, target_mask) * valid).sum(), tokens

    matches, tokens = jax.lax.map(exact_at, jnp.arange(1, cfg.decoder_layers + 1))  # [L], [L, B, N]
    sums = {
      "loss_sum": exits.loss * num_tokens,
      "correct_tokens": exits.token_accuracy * num_tokens,
      "num_tokens": num_tokens,
      "exact_matches": matches,
      "num_examples": valid.sum(),
      "sample_targets": targets[:num_samples],
      "sample_tokens": tokens[:, :num_samples],
    }
    if exits.classifier_accuracy is not None:
      sums["classifier_correct"] = exits.classifier_accuracy * num_tokens
    return sums

  if param_shardings is None:
    return jax.jit(eval_batch)
  return jax.jit(
    eval_batch,
    in_shardings=(param_shardings, batch_sharding),
    out_shardings=sharding.replicated(batch_sharding.mesh),
  )


def evaluate_exits(
  eval_fn,
  params,
  batches: Iterable[dict],
  decode_text=None,
  num_samples: int = 0,
  to_device: Callable[[dict], dict] = lambda batch: batch,
) -> dict:
  """Run `eval_fn` over `batches` (each with `valid` rows; `to_device` makes the arrays it takes,
  e.g. global ones from this process's rows); -> {exit_loss, exit_token_accuracy, exit_exact_match:
  [L] lists, (exit_classifier_accuracy [L] for a model with an exit classifier), num_examples,
  samples: [(target, prediction at each exit)] of the first batch's first rows}."""
  totals, samples = None, []
  for batch in batches:
    out = jax.device_get(eval_fn(params, to_device(batch)))
    targets, tokens = out.pop("sample_targets"), out.pop("sample_tokens")
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
    if decode_text is not None and not samples:
      rows = min(num_samples, int(out["num_examples"]), len(targets))
      samples = [
        {"target": decode_text(targets[row]), "exits": [decode_text(t[row]) for t in tokens]}
        for row in range(rows)
      ]
  if totals is None:
    raise ValueError("The validation split yielded no batches.")
  tokens, examples = max(float(totals["num_tokens"]), 1.0), max(float(totals["num_examples"]), 1.0)
  results = {
    "exit_loss": (totals["loss_sum"] / tokens).tolist(),
    "exit_token_accuracy": (totals["correct_tokens"] / tokens).tolist(),
    "exit_exact_match": (totals["exact_matches"] / examples).tolist(),
    "num_examples": int(totals["num_examples"]),
    "samples": samples,
  }
  if "classifier_correct" in totals:
    results["exit_classifier_accuracy"] = (totals["classifier_correct"] / tokens).tolist()
  return results
