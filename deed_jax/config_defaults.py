"""Defaults shared by every training config, and the check that turns a config into typed parts.

Task configs under `configs/` start from `training_defaults()` and override what they need.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import ml_collections
from ml_collections.config_dict import placeholder

from deed_jax import checkpoint, sharding
from deed_jax.errors import MissingPathError, UserError
from deed_jax.exit_metrics import DEFAULT_VOCAB_CHUNK
from deed_jax.models import ModelConfig
from deed_jax.param_tree import path_holds
from deed_jax.task_config import task_defaults, validate_task
from deed_jax.training.exit_schedule import EXIT_SCHEDULES
from deed_jax.training.losses import LOSS_MODES
from deed_jax.workdir import read_model_config

# ModelConfig annotations -> the type a `--config.model.<field>` flag is parsed as (object: a Python
# literal, for fields that take an int or a pair, or a dict).
_FLAG_TYPES = {
  "int": int,
  "float": float,
  "str": str,
  "bool": bool,
  "int | None": int,
  "tuple[int, ...]": tuple,
}


def model_placeholders() -> ml_collections.ConfigDict:
  """Every ModelConfig field, unset (None) until a config file or a `--config.model.<field>=...`
  flag sets it, so the command line reaches fields a config file leaves alone."""
  return ml_collections.ConfigDict(
    {
      field.name: placeholder(_FLAG_TYPES.get(field.type, object))
      for field in dataclasses.fields(ModelConfig)
    }
  )


def model_options(config: ml_collections.ConfigDict) -> dict:
  """The ModelConfig options a training config sets (its unset placeholders left out)."""
  return {k: v for k, v in config.model.to_dict().items() if v is not None}


def training_defaults() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = task_defaults()
  config.model = model_placeholders()  # ModelConfig keyword arguments; unset (None): its defaults.
  # A deed-jax workdir to start from (e.g. `python -m deed_jax.convert` output): its architecture and
  # params; config.model may then set only `dropout_rate`. "" = random initialisation.
  config.init_from = ""
  # exit_classifier_weight: the exit classifier's loss (models with ModelConfig.exit_classifier).
  # exits_per_step: intermediate exits supervised per step (0: every exit), chosen by exit_schedule
  # ("random" or "rotate"; deed_jax.training.exit_schedule). vocab_chunk: vocabulary columns per
  # chunk of the head's loss (the largest transient is [batch * target length, vocab_chunk]).
  config.loss = ml_collections.ConfigDict(
    dict(
      mode="deed",
      label_smoothing=0.0,
      exit_classifier_weight=1.0,
      exits_per_step=0,
      exit_schedule="random",
      vocab_chunk=DEFAULT_VOCAB_CHUNK,
    )
  )
  # Train only the parameters under these path names (e.g. ("exit_classifier",) to fit the exit
  # classifier of a frozen model, with init_from); () = everything.
  config.train_only = ()
  config.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=1e-3, warmup_steps=200, end_lr_factor=0.01, weight_decay=0.01)
  )
  config.optimizer.update(dict(clip_norm=1.0, b1=0.9, b2=0.98))
  # The device mesh (deed_jax.sharding): sizes of its data, fsdp and tensor axes; one -1 takes the
  # devices the others leave. Their product is the device count of the run (all processes).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis name -> mesh axes (a name, a tuple of names, or None): where parameters, optimizer
  # state and batches (`batch`) are split.
  config.sharding_rules = sharding.DEFAULT_RULES
  config.seed = 0
  config.batch_size = 32  # The global batch: examples per step over all processes and devices.
  # Large models: recompute each layer's activations in the backward pass instead of keeping them.
  # (bf16 compute with f32 params and optimizer state: --config.model.dtype=bfloat16.)
  config.remat = False
  # Average the gradients of this many steps before each update (optax.MultiSteps): the update of a
  # batch this many times larger, in the memory of one. total_steps must be a multiple of it.
  config.gradient_accumulation_steps = 1
  config.total_steps = 1000
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.eval_batch_size = 64
  config.num_eval_samples = 4  # Decoded examples printed with each evaluation.
  return config


# What a run may change about a model it starts from (`init_from`): nothing that shapes the parameters
# it has; it may add an exit classifier (which then starts fresh).
INIT_FROM_OVERRIDABLE = ("dropout_rate", "exit_classifier", "exit_classifier_dim")
# Parameters a run may add to the model it starts from.
ADDABLE_PARAMS = ("exit_classifier",)


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The `ModelConfig` a training config describes; unknown options raise naming them."""
  options = model_options(config)
  if not config.init_from:
    return ModelConfig.from_dict(options)
  base = read_model_config(config.init_from)
  if base is None:
    raise MissingPathError(
      f"config.init_from={config.init_from!r} holds no model_config.json: it "
      "must be a deed-jax workdir (e.g. written by python -m deed_jax.convert)."
    )
  values = base.to_dict()
  clashes = sorted(
    k for k, v in options.items() if k not in INIT_FROM_OVERRIDABLE and values.get(k) != v
  )
  if values.get("exit_classifier", "none") != "none":  # a classifier it has is part of its shape
    clashes += sorted(
      k
      for k in ("exit_classifier", "exit_classifier_dim")
      if k in options and options[k] != values.get(k)
    )
  if clashes:
    raise UserError(
      f"config.init_from={config.init_from!r} fixes the architecture, but config.model "
      f"sets {clashes} to other values; with init_from, config.model may set only "
      f"{list(INIT_FROM_OVERRIDABLE)}."
    )
  return ModelConfig.from_dict({**values, **options})


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Check a training config before anything is built or written. Returns its ModelConfig."""
  _check_known_options(config)
  model = model_config(config)
  _check_loss(config.loss, model)
  _check_train_only(config.train_only, model)
  validate_task(config.task)
  counts = ("batch_size", "eval_batch_size", "total_steps", "log_every_steps", "eval_every_steps")
  for name in counts + (
    "checkpoint_every_steps",
    "keep_checkpoints",
    "gradient_accumulation_steps",
  ):
    if config[name] < 1:
      raise UserError(f"config.{name}={config[name]} must be >= 1.")
  if config.total_steps % config.gradient_accumulation_steps:
    raise UserError(
      f"config.total_steps={config.total_steps} is not a multiple of "
      f"config.gradient_accumulation_steps={config.gradient_accumulation_steps}: the "
      "last update would be left half accumulated."
    )
  check_mesh(config)
  return model


def _check_known_options(config: ml_collections.ConfigDict) -> None:
  """Every option the config sets is one the defaults know."""
  defaults = training_defaults()
  unknown = sorted(set(config.keys()) - set(defaults.keys()))
  if "decode" in unknown:
    raise UserError(
      "config.decode (a decoding comparison after training) is gone: training trains; "
      "compare decoding settings with python -m deed_jax.evaluate --workdir <workdir>."
    )
  if unknown:
    raise UserError(f"Unknown config option(s) {unknown}; known: {sorted(defaults.keys())}.")
  for block in ("task", "loss", "optimizer", "mesh"):
    extra = sorted(set(config[block].keys()) - set(defaults[block].keys()))
    if extra:
      raise UserError(
        f"Unknown config option(s) config.{block}.{extra}; known: {sorted(defaults[block].keys())}."
      )


def _check_loss(loss: ml_collections.ConfigDict, model: ModelConfig) -> None:
  if loss.mode not in LOSS_MODES:
    raise UserError(f"config.loss.mode={loss.mode!r} is not one of {LOSS_MODES}.")
  if not 0.0 <= loss.label_smoothing < 1.0:
    raise UserError(f"config.loss.label_smoothing={loss.label_smoothing} must be in [0, 1).")
  weight = loss.exit_classifier_weight
  if not weight >= 0:
    raise UserError(f"config.loss.exit_classifier_weight={weight} must be >= 0.")
  sampled, intermediate = loss.exits_per_step, model.decoder_layers - 1
  if not isinstance(sampled, int) or not 0 <= sampled <= intermediate:
    raise UserError(
      f"config.loss.exits_per_step={sampled!r} must be an integer in 0..{intermediate} (0: every "
      f"exit; the model has {intermediate} exits below its last)."
    )
  if loss.exit_schedule not in EXIT_SCHEDULES:
    raise UserError(
      f"config.loss.exit_schedule={loss.exit_schedule!r} is not one of {EXIT_SCHEDULES}."
    )
  if sampled and loss.mode == "final":
    raise UserError(
      f"config.loss.exits_per_step={sampled} samples intermediate exits, but "
      "config.loss.mode='final' supervises none; use mode 'deed' or 'linear'."
    )
  if not isinstance(loss.vocab_chunk, int) or loss.vocab_chunk < 1:
    raise UserError(f"config.loss.vocab_chunk={loss.vocab_chunk!r} must be an integer >= 1.")
  if model.exit_classifier != "none" and weight == 0:
    raise UserError(
      f"config.loss.exit_classifier_weight={weight} would leave the model's exit "
      f"classifier (model.exit_classifier={model.exit_classifier!r}) untrained."
    )


def _check_train_only(train_only, model: ModelConfig) -> None:
  """`train_only` is a tuple of path names, each holding some parameter of the model."""
  if isinstance(train_only, str) or not all(
    isinstance(n, str) and n.strip("/") for n in train_only
  ):
    raise UserError(
      f"config.train_only={train_only!r} must be a tuple of parameter path names, "
      "e.g. ('exit_classifier',); on the command line --config.train_only=exit_classifier "
      'or --config.train_only=\'("exit_classifier", "decoder/adapters")\'.'
    )
  paths = list(checkpoint.flat_params(checkpoint.abstract_params(model)[1]))
  for name in train_only:
    if not any(path_holds(path, [name]) for path in paths):
      top = sorted({"/".join(p.split("/")[:2]) for p in paths})
      raise UserError(
        f"config.train_only names {name!r}, which no parameter of this model holds "
        f"(its parameters are under {top})."
      )


def check_mesh(
  config: ml_collections.ConfigDict, num_devices: int | None = None
) -> tuple[int, ...]:
  """The mesh shape the config gives the run's devices (default: every device of every process),
  and its rules and batch sizes checked against it: each global batch must split evenly over the
  mesh axes that split batches."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  shape = sharding.mesh_shape(config.mesh.to_dict(), num_devices)
  table = sharding.check_rules(config.sharding_rules)
  sizes = dict(zip(sharding.MESH_AXES, shape))
  shards = math.prod(sizes[a] for a in table.get("batch", ()))
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % shards:
      raise UserError(
        f"config.{name}={config[name]} does not split over the {shards} batch shards "
        f"of the mesh ({', '.join(f'{a}={s}' for a, s in sizes.items())}; batches are "
        f"split over {list(table.get('batch', ()))}); make it a multiple of {shards}."
      )
  return shape


# Options a resumed run may change freely: where and how often it logs, evaluates and checkpoints, the
# mesh it runs on, how the head's loss is chunked (the same numbers, other memory), and `decode` (the
# decoding comparison older runs ended with). Anything else changes the run's numbers.
RUN_NEUTRAL = (
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_batch_size",
  "num_eval_samples",
  "decode",
  "mesh",
  "sharding_rules",
  "remat",
  "loss.vocab_chunk",
  "task.data_dir",
  "task.manual_dir",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def run_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The options in which `config` differs from the config a run started with (`saved`, as stored in
  its workdir), leaving out those in RUN_NEUTRAL; as 'name: saved -> now'. An option the saved config
  lacks (written before the option existed) counts as its default."""
  as_json = lambda c: json.loads(json.dumps(c.to_dict()))
  old = {**_flatten(as_json(training_defaults())), **_flatten(saved)}
  new = _flatten(as_json(config))
  neutral = lambda name: any(name == n or name.startswith(n + ".") for n in RUN_NEUTRAL)
  return [
    f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
    for k in sorted(set(old) | set(new))
    if not neutral(k) and old.get(k) != new.get(k)
  ]
