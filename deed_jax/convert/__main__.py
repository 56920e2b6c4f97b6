r"""Convert a Hugging Face PyTorch checkpoint to a deed-jax workdir, or back.

  python -m deed_jax.convert --source HF_DIR --workdir OUT [--adapter bottleneck --adapter_dim 64]
  python -m deed_jax.convert --workdir OUT --to_hf HF_OUT [--step N]

HF -> orbax writes OUT/model_config.json, OUT/checkpoints/0 (orbax), OUT/hf_source.json and the
tokenizer files; `deed_jax.checkpoint.load_model(OUT)` restores the model. orbax -> HF writes
model.safetensors + config.json (+ the exit adapters beside them). JAX runs on the CPU here.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Conversion moves weights; it needs no accelerator.

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from deed_jax.convert import (  # pylint: disable=wrong-import-position
    ConvertOptions, hf_to_orbax, orbax_to_hf)

_SOURCE = flags.DEFINE_string("source", None, "Hugging Face model directory (config.json + weights).")
_WORKDIR = flags.DEFINE_string("workdir", None, "deed-jax workdir: written (with --source) or read.",
                               required=True)
_TO_HF = flags.DEFINE_string("to_hf", None, "Write the workdir's model as a Hugging Face directory.")
_STEP = flags.DEFINE_integer("step", None, "With --to_hf: the checkpoint step (default: newest).")
_ADAPTER = flags.DEFINE_enum("adapter", "bottleneck", ["none", "linear", "bottleneck"],
                             "Exit adapters to add (they start as the identity).")
_ADAPTER_DIM = flags.DEFINE_integer("adapter_dim", 64, "Bottleneck width of the exit adapters.")
_MAX_TARGET_LENGTH = flags.DEFINE_integer(
    "max_target_length", None, "Decoder positions (T5's relative positions need a bound; default 512).")
_SEED = flags.DEFINE_integer("seed", 0, "Initialises the adapters.")


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO.
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (_SOURCE.value is None) == (_TO_HF.value is None):
    raise app.UsageError("Give exactly one of --source (HF -> orbax) and --to_hf (orbax -> HF).")
  if _TO_HF.value:
    orbax_to_hf(_WORKDIR.value, _TO_HF.value, _STEP.value)
    print(f"Wrote {_TO_HF.value} from {_WORKDIR.value}.")
    return
  options = ConvertOptions(adapter=_ADAPTER.value, adapter_dim=_ADAPTER_DIM.value,
                           max_target_length=_MAX_TARGET_LENGTH.value, seed=_SEED.value)
  config = hf_to_orbax(_SOURCE.value, _WORKDIR.value, options)
  print(f"Wrote {_WORKDIR.value}: {config.encoder} encoder x {config.encoder_layers}, decoder x "
        f"{config.decoder_layers}, d_model {config.d_model}, vocab {config.vocab_size}.")


if __name__ == "__main__":
  app.run(main)
