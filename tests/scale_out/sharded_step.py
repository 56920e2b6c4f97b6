"""Run in a subprocess with 8 host CPU devices (tests/scale_out/test_sharding.py): one train step on
a (data, fsdp, tensor) = (2, 2, 2) mesh against the same step on one device, with every exit
supervised and with sampled exits (rotate, 1 per step). Exits non-zero (an
AssertionError) if they differ or the arrays are not really sharded; prints what it checked."""

import json

import jax
import numpy as np

from deed_jax import sharding
from deed_jax.config_defaults import training_defaults
from deed_jax.training.exit_schedule import ExitSampling
from deed_jax.training.losses import exit_weights
from deed_jax.training.optimizer import make_optimizer
from deed_jax.training.train_step import make_train_step, train_state_layout
from tests.conftest import random_inputs, tiny_config


def run_step(config, mesh, batch, exit_sampling=None):
  tx = make_optimizer(training_defaults().optimizer, total_steps=10)
  layout = train_state_layout(config, tx, 0, (), mesh, sharding.DEFAULT_RULES)
  batch_sharding = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
  step = make_train_step(
    layout.graphdef,
    tx,
    exit_weights("deed", config.decoder_layers),
    exit_sampling=exit_sampling,
    state_shardings=layout.shardings,
    batch_sharding=batch_sharding,
  )
  state = layout.init()
  # Two steps, so the second one starts from updated params and optimizer moments.
  for _ in range(2):
    state, metrics = step(state, sharding.global_batch(batch, batch_sharding), jax.random.key(1))
  return state, metrics


def main():
  assert jax.device_count() == 8, jax.devices()
  config = tiny_config(dropout_rate=0.0, vocab_size=40)  # 40: the vocabulary splits over tensor
  (encoder, decoder_ids) = random_inputs(config, batch=8, target_length=config.max_target_length)
  targets = np.roll(decoder_ids, -1, axis=1)
  batch = {
    **encoder,
    "decoder_input_ids": decoder_ids,
    "targets": targets,
    "target_mask": np.ones_like(targets),
  }
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  sharded_state, sharded_metrics = run_step(config, mesh, batch)
  single_state, single_metrics = run_step(config, one, batch)

  np.testing.assert_allclose(sharded_metrics["loss"], single_metrics["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(sharded_state), jax.tree.leaves(single_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  sampling = ExitSampling(1, "rotate")
  _, sampled_metrics = run_step(config, mesh, batch, sampling)
  _, single_sampled = run_step(config, one, batch, sampling)
  np.testing.assert_allclose(sampled_metrics["exit_loss"], single_sampled["exit_loss"], rtol=1e-5)
  assert np.isnan(np.asarray(sampled_metrics["exit_loss"])).sum() == config.decoder_layers - 2
  assert not np.allclose(sampled_metrics["loss"], sharded_metrics["loss"])
  # Really sharded: an MLP kernel [embed=32, mlp=48] is split over fsdp and tensor (16 x 24 per
  # device), attention q [embed=32, heads=4, kv=8] over fsdp and tensor; its Adam moment likewise.
  wi = sharded_state.params["decoder"]["layers"][0]["mlp"]["wi"]
  q = sharded_state.params["decoder"]["layers"][0]["self_attention"]["q"]
  mu = sharded_state.opt_state[1][0].mu["decoder"]["layers"][0]["mlp"]["wi"]
  shapes = {
    "wi": [s.data.shape for s in wi.addressable_shards],
    "q": [s.data.shape for s in q.addressable_shards],
    "mu": [s.data.shape for s in mu.addressable_shards],
  }
  assert set(shapes["wi"]) == {(16, 24)} and len(shapes["wi"]) == 8, shapes
  assert set(shapes["q"]) == {(16, 2, 8)}, shapes
  assert set(shapes["mu"]) == {(16, 24)}, shapes
  print(
    json.dumps(
      {
        "loss": float(sharded_metrics["loss"]),
        "shard_shapes": {k: [list(s) for s in v[:1]] for k, v in shapes.items()},
      }
    )
  )


if __name__ == "__main__":
  main()
