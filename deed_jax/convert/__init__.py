"""Hugging Face PyTorch checkpoints <-> deed-jax orbax workdirs (needs the `convert` extra).

python -m deed_jax.convert --source HF_DIR --workdir OUT      # HF -> orbax
python -m deed_jax.convert --workdir OUT --to_hf HF_OUT       # orbax -> HF
"""

from deed_jax.convert.export_hf import orbax_to_hf
from deed_jax.convert.families import SUPPORTED
from deed_jax.convert.import_hf import convert_params, hf_to_orbax
from deed_jax.convert.options import ConvertOptions
from deed_jax.convert.rules import ConversionError

__all__ = [
  "ConversionError",
  "ConvertOptions",
  "SUPPORTED",
  "convert_params",
  "hf_to_orbax",
  "orbax_to_hf",
]
