"""The command-line tools on bad input: one line naming the value, a non-zero status, no traceback,
nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_CONFIG = os.path.join(REPO, "configs", "forms_text.py") + ":runlocal"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=600,
  )


def _one_line_error(run: subprocess.CompletedProcess, *expected: str, status: int = 2) -> str:
  assert run.returncode == status, (run.returncode, run.stderr[-2000:])
  assert "Traceback" not in run.stderr, run.stderr[-2000:]
  lines = [l for l in run.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, run.stderr[-2000:]
  for text in expected:
    assert text in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize(
  "flags, expected",
  [
    # A ModelConfig field the config file does not set is reachable from the command line.
    (["--config.model.dtype=float64"], ["ModelConfig.dtype='float64'", "float32"]),
    (
      ["--config.model.dtype=bfloat16", "--config.model.vocab_size=100"],
      ["259 ids", "model.vocab_size=100"],
    ),
    (["--config.loss.mode=calm"], ["config.loss.mode='calm'"]),
    (["--config.train_only=exit_clasifier"], ["'exit_clasifier'"]),
    (["--init_from=/nonexistent/workdir"], ["/nonexistent/workdir", "model_config.json"]),
  ],
)
def test_train_refuses_bad_options_in_one_line(tmp_path, flags, expected):
  workdir = tmp_path / "run"
  run = _run("deed_jax.train", f"--config={TEXT_CONFIG}", f"--workdir={workdir}", *flags)
  _one_line_error(run, *expected)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "flag, expected",
  [
    ("--config.model.no_such_field=3", "no_such_field"),
    ("--config.no_such_option=3", "no_such_option"),
    ("--config.total_steps=many", "many"),
  ],
)
def test_a_config_override_that_does_not_fit_is_one_line(tmp_path, flag, expected):
  run = _run("deed_jax.train", f"--config={TEXT_CONFIG}", f"--workdir={tmp_path / 'run'}", flag)
  assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
  assert expected in run.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--workdir=/nonexistent/w", "--to_hf=OUT"], ["/nonexistent/w/hf_source.json not found"]),
    (["--workdir=W", "--source=S", "--to_hf=OUT"], ["exactly one of --source"]),
    (["--workdir=W", "--source=/nonexistent/hf"], ["/nonexistent/hf", "config.json"]),
  ],
)
def test_convert_refuses_bad_arguments_in_one_line(tmp_path, args, expected):
  args = [
    a.replace("=OUT", f"={tmp_path / 'out'}")
    .replace("=W", f"={tmp_path / 'w'}")
    .replace("=S", f"={tmp_path}")
    for a in args
  ]
  _one_line_error(_run("deed_jax.convert", *args), *expected)
  assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--workdir=/nonexistent/run"], ["/nonexistent/run"]),
    (["--workdir=/nonexistent/run", "--thresholds=0.5,high"], ["--thresholds=0.5,high"]),
  ],
)
def test_evaluate_refuses_bad_input_in_one_line(args, expected):
  _one_line_error(_run("deed_jax.evaluate", *args), *expected)
