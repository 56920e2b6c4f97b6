"""The supported Hugging Face families, each a module with `ARCHITECTURES`, `model_config(hf, options)`
and `keymap(config, hf)`."""

from __future__ import annotations

from types import ModuleType

from deed_jax.convert.families import bart, t5, vision
from deed_jax.convert.rules import ConversionError

_FAMILIES: tuple[ModuleType, ...] = (bart, t5, vision)
SUPPORTED = tuple(arch for family in _FAMILIES for arch in family.ARCHITECTURES)


def family_for(hf: dict) -> ModuleType:
  """The family module of an HF config.json (by its `architectures`)."""
  architectures = hf.get("architectures") or []
  for family in _FAMILIES:
    if architectures and architectures[0] in family.ARCHITECTURES:
      if hasattr(family, "check_supported"):
        family.check_supported(hf)
      return family
  raise ConversionError(
    f"Unsupported architecture {architectures or hf.get('model_type')!r}; supported: "
    f"{', '.join(SUPPORTED)}."
  )
