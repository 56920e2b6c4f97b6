r"""Convert a Hugging Face PyTorch checkpoint to a deed-jax workdir, or back.

  python -m deed_jax.convert --source HF_DIR --workdir OUT [--adapter bottleneck --adapter_dim 64]
  python -m deed_jax.convert --workdir OUT --to_hf HF_OUT [--step N]

HF -> orbax writes OUT/model_config.json, OUT/checkpoints/0 (orbax), OUT/hf_source.json and the
tokenizer files; `deed_jax.checkpoint.load_model(OUT)` restores the model. orbax -> HF writes
model.safetensors + config.json (+ the exit modules beside them, which converting that directory back
restores). JAX runs on the CPU here.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Conversion moves weights; it needs no accelerator.

from absl import flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from deed_jax import cli  # pylint: disable=wrong-import-position
from deed_jax.convert import (  # pylint: disable=wrong-import-position
  ConvertOptions,
  hf_to_orbax,
  orbax_to_hf,
)
from deed_jax.errors import UserError  # pylint: disable=wrong-import-position

_SOURCE = flags.DEFINE_string(
  "source", None, "Hugging Face model directory (config.json + weights)."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "deed-jax workdir: written (with --source) or read.", required=True
)
_TO_HF = flags.DEFINE_string(
  "to_hf", None, "Write the workdir's model as a Hugging Face directory."
)
_STEP = flags.DEFINE_integer("step", None, "With --to_hf: the checkpoint step (default: newest).")
_ADAPTER = flags.DEFINE_enum(
  "adapter",
  None,
  ["none", "linear", "bottleneck"],
  "Exit adapters to add (they start as the identity). Default: bottleneck, "
  "or those of a directory deed-jax exported.",
)
_ADAPTER_DIM = flags.DEFINE_integer(
  "adapter_dim", None, "Bottleneck width of the exit adapters (default 64)."
)
_EXIT_CLASSIFIER = flags.DEFINE_enum(
  "exit_classifier",
  None,
  ["none", "linear", "mlp"],
  "An exit classifier to add, for confidence='classifier' once "
  "trained (default: none, or that of an exported directory).",
)
_EXIT_CLASSIFIER_DIM = flags.DEFINE_integer(
  "exit_classifier_dim", None, "Hidden width of an mlp exit classifier (default 64)."
)
_MAX_TARGET_LENGTH = flags.DEFINE_integer(
  "max_target_length",
  None,
  "Decoder positions (T5's relative positions need a bound; default 512).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Initialises the adapters.")


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO.
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  if (_SOURCE.value is None) == (_TO_HF.value is None):
    raise UserError("Give exactly one of --source (HF -> orbax) and --to_hf (orbax -> HF).")
  if _TO_HF.value:
    orbax_to_hf(_WORKDIR.value, _TO_HF.value, _STEP.value)
    print(f"Wrote {_TO_HF.value} from {_WORKDIR.value}.")
    return
  options = ConvertOptions(
    adapter=_ADAPTER.value,
    adapter_dim=_ADAPTER_DIM.value,
    exit_classifier=_EXIT_CLASSIFIER.value,
    exit_classifier_dim=_EXIT_CLASSIFIER_DIM.value,
    max_target_length=_MAX_TARGET_LENGTH.value,
    seed=_SEED.value,
  )
  config = hf_to_orbax(_SOURCE.value, _WORKDIR.value, options)
  print(
    f"Wrote {_WORKDIR.value}: {config.encoder} encoder x {config.encoder_layers}, decoder x "
    f"{config.decoder_layers}, d_model {config.d_model}, vocab {config.vocab_size}."
  )


if __name__ == "__main__":
  cli.run(main)
