"""The declared mapping between our parameters and Hugging Face keys, applied in both directions.

A family lists `Rule`s: our parameter path ("decoder/layers/0/self_attention/q"), the HF key, and a
`Hook` that turns the HF tensor into ours and back (transpose, head reshape). The same rules serve
HF -> orbax and orbax -> HF, so the two directions cannot drift apart (as in MaxText's conversion).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from deed_jax.errors import UserError

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Hook:
  """`to_ours(hf_value, our_shape)` and its inverse `to_hf(our_value)`; exact (no arithmetic)."""

  name: str
  to_ours: Callable[[np.ndarray, Shape], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Hook("identity", lambda x, shape: x, lambda x: x)
# torch.nn.Linear stores [out, in]; we store [in, out].
LINEAR = Hook("linear", lambda x, shape: x.T, lambda x: x.T)
# q/k/v projections: [H * Dh, D] <-> [D, H, Dh].
HEADS_IN = Hook(
  "heads_in", lambda x, shape: x.T.reshape(shape), lambda x: x.reshape(x.shape[0], -1).T
)
# Attention output projection: [D, H * Dh] <-> [H, Dh, D].
HEADS_OUT = Hook(
  "heads_out", lambda x, shape: x.T.reshape(shape), lambda x: x.reshape(-1, x.shape[-1]).T
)
# Projection biases [H * Dh] <-> [H, Dh].
HEADS_BIAS = Hook("heads_bias", lambda x, shape: x.reshape(shape), lambda x: x.reshape(-1))


def leading_ones(count: int) -> Hook:
  """HF keeps some vectors with leading unit axes: final_logits_bias [1, V], ViT's cls_token [1, 1, D]
  and position_embeddings [1, N + 1, D]; ours drop them."""
  return Hook(
    f"leading_ones({count})",
    lambda x, shape: x.reshape(shape),
    lambda x: x.reshape((1,) * count + x.shape),
  )


ROW = leading_ones(1)


def patch_conv(patch_hw: tuple[int, int], channels: int) -> Hook:
  """A patch-embedding Conv2d weight [D, C, ph, pw] <-> our flattened-patch matrix [ph * pw * C, D].

  Our patches are flattened in (row, column, channel) order from NHWC images.
  """
  ph, pw = patch_hw
  return Hook(
    "patch_conv",
    lambda x, shape: x.transpose(2, 3, 1, 0).reshape(shape),
    lambda x: x.reshape(ph, pw, channels, -1).transpose(3, 2, 0, 1),
  )


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str  # our parameter path, "/"-separated
  hf: str  # the Hugging Face state-dict key
  hook: Hook = IDENTITY
  aliases: tuple[str, ...] = ()  # tied copies of `hf` some files also hold; must be equal to it


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """A family's full mapping for one configuration."""

  rules: tuple[Rule, ...]
  ignored: tuple[str, ...] = ()  # HF keys that carry no weights we use (HF ignores them too)


class ConversionError(UserError):
  """A checkpoint that does not fit the declared mapping; the message lists every problem."""


def to_ours(
  keymap: KeyMap, hf: Mapping[str, np.ndarray], shapes: Mapping[str, Shape], source: str
) -> dict[str, np.ndarray]:
  """HF state dict -> {our path: array}. Collects missing, unexpected and mis-shaped keys, then raises
  one error listing them all (nothing is converted halfway)."""
  out, used, missing, misshaped, untied = {}, set(), [], [], []
  for rule in keymap.rules:
    present = [key for key in (rule.hf,) + rule.aliases if key in hf]
    used.update(present)
    if not present:
      missing.append(rule.hf)
      continue
    value = hf[present[0]]
    untied += [
      f"{key} != {present[0]}" for key in present[1:] if not np.array_equal(hf[key], value)
    ]
    expected = shapes[rule.ours]
    try:
      converted = rule.hook.to_ours(value, expected)
    except ValueError:
      converted = None
    if converted is None or tuple(converted.shape) != tuple(expected):
      misshaped.append(
        f"{rule.hf} {tuple(value.shape)} (-> {rule.ours}, expected {tuple(expected)} "
        f"via {rule.hook.name})"
      )
      continue
    out[rule.ours] = np.ascontiguousarray(converted)
  unexpected = sorted(set(hf) - used - set(keymap.ignored))
  problems = []
  for title, keys in (
    ("missing keys", missing),
    ("unexpected keys", unexpected),
    ("mis-shaped keys", misshaped),
    ("tied keys that differ", untied),
  ):
    if keys:
      problems.append(
        f"{len(keys)} {title}: {', '.join(keys[:20])}" + (" ..." if len(keys) > 20 else "")
      )
  if problems:
    raise ConversionError(f"{source} does not fit the mapping: " + "; ".join(problems) + ".")
  return out


def to_hf(keymap: KeyMap, ours: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{our path: array} -> HF state dict (canonical keys only, as `save_pretrained` writes them)."""
  return {
    rule.hf: np.ascontiguousarray(rule.hook.to_hf(np.asarray(ours[rule.ours])))
    for rule in keymap.rules
  }


# -- rule builders shared by the families ------------------------------------------------------------
def attention_rules(ours: str, q: str, k: str, v: str, o: str, *, bias: bool) -> list[Rule]:
  """An `Attention` module from four HF linear layers (given by their key prefixes)."""
  rules = [
    Rule(f"{ours}/q", f"{q}.weight", HEADS_IN),
    Rule(f"{ours}/k", f"{k}.weight", HEADS_IN),
    Rule(f"{ours}/v", f"{v}.weight", HEADS_IN),
    Rule(f"{ours}/o", f"{o}.weight", HEADS_OUT),
  ]
  if bias:
    rules += [
      Rule(f"{ours}/q_bias", f"{q}.bias", HEADS_BIAS),
      Rule(f"{ours}/k_bias", f"{k}.bias", HEADS_BIAS),
      Rule(f"{ours}/v_bias", f"{v}.bias", HEADS_BIAS),
      Rule(f"{ours}/o_bias", f"{o}.bias"),
    ]
  return rules


def norm_rules(ours: str, hf: str, *, bias: bool = True) -> list[Rule]:
  """A `Norm` (scale, + bias for LayerNorm) from an HF norm's weight (and bias)."""
  return [Rule(f"{ours}/scale", f"{hf}.weight")] + (
    [Rule(f"{ours}/bias", f"{hf}.bias")] if bias else []
  )


def linear_rules(ours_weight: str, hf: str, ours_bias: str | None = None) -> list[Rule]:
  """A torch Linear: weight transposed, bias as is."""
  rules = [Rule(ours_weight, f"{hf}.weight", LINEAR)]
  return rules + ([Rule(ours_bias, f"{hf}.bias")] if ours_bias else [])


def head_rules(
  tied: bool, embedding_key: str, embedding_aliases: tuple[str, ...], lm_head_key: str
) -> list[Rule]:
  """The token embedding (with its tied copies) and the LM head when it is not tied."""
  table = "decoder/token_embedding/embedding"
  if tied:
    return [Rule(table, embedding_key, aliases=embedding_aliases + (lm_head_key,))]
  return [
    Rule(table, embedding_key, aliases=embedding_aliases),
    *linear_rules("lm_head", lm_head_key.removesuffix(".weight")),
  ]
