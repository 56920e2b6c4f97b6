"""The package's layers: lower layers never import higher ones (checked in fresh interpreters, so
what an import pulls in transitively counts)."""

import subprocess
import sys

import pytest


def _imported(module: str) -> set[str]:
  code = (
    f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('deed_jax')))"
  )
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return set(run.stdout.split())


@pytest.mark.parametrize(
  "module, forbidden",
  [
    ("deed_jax.evaluation.evaluator", ("deed_jax.training", "deed_jax.bench", "deed_jax.train")),
    ("deed_jax.decoding", ("deed_jax.workdir", "deed_jax.checkpoint", "deed_jax.training")),
    ("deed_jax.models", ("deed_jax.decoding", "deed_jax.training", "deed_jax.evaluation")),
  ],
)
def test_a_layer_does_not_import_the_layers_above_it(module, forbidden):
  imported = _imported(module)
  assert module in imported
  assert not {m for m in imported if m.startswith(forbidden)}
