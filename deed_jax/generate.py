r"""Run a workdir's model on one's own input: an image or a text, optionally after a decoder prompt.

  python -m deed_jax.generate --workdir workdirs/donut --image page.png \
      --prompt "<s_docvqa><s_question>What is the date?</s_question><s_answer>"
  python -m deed_jax.generate --workdir workdirs/bart --text "A long article ..." \
      --config.exit_mode=static --config.num_beams=4

Decodes as `workdir_decode_config(workdir)` says: a converted model's generation settings, then the
threshold and exit settings calibration stored (`python -m deed_jax.evaluate --calibrate`), then the
`--config.<field>=value` overrides (any scalar field of `DecodeConfig`: exit_mode, threshold,
num_beams, max_new_tokens, ...). Prints the decoded text, each token with the decoder layer it
exited at, and the latency (the median of `--repeats` calls after a compiling one).

The image is fitted to the model's input size as its training data was (pad or resize, as the
workdir's preprocessor_config.json says) and normalised to [-1, 1]; a text is encoded as the
model's sources were. `--prompt` is the decoder's prefix as its tokens, exactly as the datasets' prompts
are fed (Donut's starts with its task token); without one the decoder starts from its start token.
The tokenizer is the one the workdir was trained with (train_config.json), else the workdir's own
tokenizer files (a converted model), else the byte tokenizer.
"""

from __future__ import annotations

import ml_collections
from absl import flags, logging
from ml_collections import config_dict, config_flags

from deed_jax import cli
from deed_jax.decode_input import OVERRIDABLE, decode_input

try:  # the flag reads its --config.* overrides from sys.argv as it is defined
  _CONFIG = config_flags.DEFINE_config_dict(
    "config",
    ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in OVERRIDABLE.items()}),
    "DecodeConfig overrides, e.g. --config.exit_mode=static --config.threshold=0.8.",
  )
except (AttributeError, KeyError) as e:
  cli.unknown_option(e)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained or converted deed-jax workdir.")
_IMAGE = flags.DEFINE_string("image", None, "An image file (image-encoder models).")
_TEXT = flags.DEFINE_string("text", None, "A source text (text-encoder models).")
_PROMPT = flags.DEFINE_string("prompt", None, "The decoder prompt (its tokens are the prefix).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the compiling one.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step (default: the newest).")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  overrides = {k: v for k, v in _CONFIG.value.items() if v is not None}
  result = decode_input(
    _WORKDIR.value,
    image=_IMAGE.value,
    text=_TEXT.value,
    prompt=_PROMPT.value,
    overrides=overrides,
    repeats=_REPEATS.value,
    step=_STEP.value,
  )
  config = result["config"]
  rule = f"{config.exit_mode}" + (
    f", threshold {config.threshold:g}" if config.exit_mode in ("deed", "copy", "oracle") else ""
  )
  print(result["text"])
  print("tokens (exit layer): " + " ".join(f"{t!r}({l})" for t, l in result["tokens"]))
  print(
    f"{result['decode_ms']:.2f} ms (median of {_REPEATS.value} calls; compiling took "
    f"{result['compile_s']:.1f} s); {config.strategy}, {rule}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)  # (no jax.config.config_with_absl: it would parse --config.* outside cli.run)
