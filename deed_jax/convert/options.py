"""What a user chooses when converting (the exit adapters the source lacks), and the translation of HF
config values that several families share."""

from __future__ import annotations

import dataclasses

from deed_jax.convert.rules import ConversionError
from deed_jax.models import ModelConfig

# HF `ACT2FN` names -> ours. HF's "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh"
# are the tanh approximation.
_ACTIVATIONS = {
  "gelu": "gelu",
  "relu": "relu",
  "gelu_new": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
}


def refuse(message: str) -> None:
  raise ConversionError(f"Cannot convert this checkpoint: {message}.")


def activation(hf: dict, key: str) -> str:
  name = hf.get(key, "gelu")
  if name not in _ACTIVATIONS:
    refuse(f"{key}={name!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
  return _ACTIVATIONS[name]


# The exit modules HF models lack, and their defaults.
EXIT_OPTIONS = {
  "adapter": "bottleneck",
  "adapter_dim": 64,
  "exit_classifier": "none",
  "exit_classifier_dim": 64,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertOptions:
  """`adapter`/`adapter_dim`: the exit adapters to add (they start as the identity, so the converted
  model's final exit is exactly the source model); `exit_classifier`/`exit_classifier_dim`: an exit
  classifier to add (for `confidence="classifier"`, trained afterwards). None: the defaults
  (`EXIT_OPTIONS`), or, for a directory deed-jax exported, the exit modules it holds. A value given
  for such a directory must agree with them. `max_target_length`: decoder positions for models
  without a learned position table (T5); None keeps the family's default (the table size, or 512)."""

  adapter: str | None = None
  adapter_dim: int | None = None
  exit_classifier: str | None = None
  exit_classifier_dim: int | None = None
  max_target_length: int | None = None
  seed: int = 0  # initialises the exit modules' non-zero parts

  def resolved(self, exported: ModelConfig | None) -> ConvertOptions:
    """Every exit option filled: from these options, else `exported` (the ModelConfig of a directory
    deed-jax exported, whose exit modules are then restored), else the defaults."""
    values = {}
    for name, default in EXIT_OPTIONS.items():
      given, held = getattr(self, name), None if exported is None else getattr(exported, name)
      if given is not None and held is not None and given != held:
        refuse(
          f"{name}={given!r} was asked for, but the directory holds the exit modules deed-jax "
          f"exported with {name}={held!r} (leave {name} unset to keep them)"
        )
      values[name] = next(v for v in (given, held, default) if v is not None)
    return dataclasses.replace(self, **values)

  def apply(self, config: ModelConfig) -> ModelConfig:
    options = self.resolved(None)
    changes = {name: getattr(options, name) for name in EXIT_OPTIONS}
    if self.max_target_length is not None:
      if (
        config.position_embedding == "learned" and self.max_target_length > config.max_target_length
      ):
        raise ValueError(
          f"max_target_length={self.max_target_length} exceeds the source model's "
          f"{config.max_target_length} learned decoder positions."
        )
      changes["max_target_length"] = self.max_target_length
    return dataclasses.replace(config, **changes)


def decoder_start_id(hf: dict) -> int:
  """HF's rule: `decoder_start_token_id`, else `bos_token_id`. It is our `bos_id` (the first decoder
  input)."""
  start = hf.get("decoder_start_token_id")
  start = hf.get("bos_token_id") if start is None else start
  if start is None:
    refuse("config.json sets neither decoder_start_token_id nor bos_token_id")
  return start
