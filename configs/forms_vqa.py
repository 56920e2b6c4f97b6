r"""Forms VQA: read the value of the named field from a rendered form (image encoder, byte decoder).

The question is drawn into the image's header row; the decoder emits the answer bytes.

  python -m deed_jax.train --config configs/forms_vqa.py --workdir workdirs/forms_vqa
  python -m deed_jax.train --config configs/forms_vqa.py:runlocal \
      --workdir workdirs/forms_vqa_normalised_local
  python -m deed_jax.train --config configs/forms_vqa.py:runlocal,plain --workdir workdirs/forms_plain
  python -m deed_jax.train --config configs/forms_vqa.py:runlocal,prompted \
      --workdir workdirs/forms_prompted_local

`runlocal` is the CPU-sized run of ./launch/local.sh (11-14 minutes of training on 2 cores): a
narrow (d 128) but deep (10 decoder layers) decoder, so that the exits differ and early exit has
layers to skip. It trains 2000 steps because reading locks in late, and the last steps are what
make the middle exits confident and right: one run went from 89.4% exact match at the last exit and
84.2% at exit 4 at step 1200 to 98.8% and 97.6% at step 1600; with 1600 steps instead of 2000 the
validation exits ended at 97.8% (exit 4) and 98.8% (exit 10) against 99.2% and 99.4%, and the
calibrated DEED threshold lost 1.0 point on test against none (docs/evaluation.md).

The task is the normalised style of the forms (some answers are the drawn value rewritten: dates as
YYYY-MM-DD, names as "Last, First", phone numbers as digits), where shallow exits do worse than deep
ones; `plain` is the earlier task, answers read as drawn, which every exit learns (deed_jax.data.forms).
`prompted` leaves the header row blank and gives the question to the decoder as a prompt in Donut's
DocVQA format, "<s_forms><s_question>phone</s_question><s_answer>", the task tokens added to the byte
tokenizer: training masks the loss on the prompt, and validation, evaluation and calibration decode
after it, as for Donut on DocVQA.
"""

from deed_jax.config_defaults import training_defaults
from deed_jax.data import forms


def get_config(arg: str = ""):
  options = {o for o in arg.split(",") if o}
  if options - {"runlocal", "plain", "prompted"} or {"plain", "prompted"} <= options:
    raise ValueError(
      f"configs/forms_vqa.py takes runlocal and plain or prompted (not both); got {arg!r}."
    )
  prompted = "prompted" in options
  runlocal = "runlocal" in options  # The CPU-sized run: a smaller model, fewer and smaller steps.
  config = training_defaults()
  config.task.dataset = "forms_vqa"
  config.task.dataset_config = "base" if "plain" in options else "base_normalised"
  config.task.source_key = "image"
  config.task.target_key = "answer"
  if prompted:
    config.task.dataset_config = "base_normalised_prompted"
    config.task.prompt_key = "prompt"
    config.task.added_tokens = forms.TASK_TOKENS
  config.model.update(
    dict(
      vocab_size=259 + (len(forms.TASK_TOKENS) if prompted else 0),
      d_model=128 if runlocal else 256,
      num_heads=4 if runlocal else 8,
      d_ff=256 if runlocal else 1024,
      encoder_layers=2 if runlocal else 6,
      decoder_layers=10 if runlocal else 6,
      # The prompt (or the start token), the answer's bytes, EOS (which is never fed back).
      max_target_length=(forms.MAX_PROMPT_TOKENS if prompted else 1) + forms.MAX_VALUE_LENGTH,
      encoder="image",
      image_size=forms.IMAGE_SIZE,
      patch_size=forms.PATCH_SIZE,
      num_channels=3,
      patch_positions="2d",
      adapter="bottleneck",
      adapter_dim=32 if runlocal else 64,
    )
  )
  if runlocal:  # A small model on few steps learns faster with a higher rate and a short warmup.
    config.optimizer.update(dict(learning_rate=3e-3, warmup_steps=50, end_lr_factor=0.05))
  config.batch_size = 32 if runlocal else 64
  config.total_steps = 2000 if runlocal else 20_000
  config.log_every_steps = 25 if runlocal else config.log_every_steps
  # The local run validates once, at the end: its minutes go to calibrating on 5000 examples.
  config.eval_every_steps = config.total_steps if runlocal else 2000
  config.checkpoint_every_steps = 1000 if runlocal else 2000
  if runlocal:
    config.eval_batch_size = 100
  return config
