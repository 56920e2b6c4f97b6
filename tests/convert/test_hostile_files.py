"""Hostile and broken checkpoint files: a safetensors file is checked as the format and the official
library check it (written byte by byte here), memory-mapped rather than read, and a config that asks
for the directory's own code is refused without asking anyone or running anything."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from deed_jax.convert import safetensors_io
from deed_jax.errors import UserError

F32 = np.arange(4, dtype="<f4").tobytes()  # 16 bytes of data


def _file(header: dict | bytes, data: bytes) -> bytes:
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  return struct.pack("<Q", len(raw)) + raw + data


def _entry(shape, begin, end, dtype="F32") -> dict:
  return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


_ONE = b'"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}'
_TWICE = b"{" + _ONE + b"," + _ONE + b"}"
# name -> (file bytes, what the refusal says, whether the official library rejects it too)
CASES = {
  "overlap": (
    _file({"a": _entry([4], 0, 16), "b": _entry([2], 8, 16)}, F32),
    "'b'.*overlaps",
    True,
  ),
  "gap": (
    _file({"a": _entry([2], 0, 8), "b": _entry([1], 12, 16)}, F32),
    "'b'.*unused bytes",
    True,
  ),
  "past_the_end": (
    _file({"a": _entry([8], 0, 32)}, F32),
    "cover 32 bytes.*holds 16.*cut short",
    True,
  ),
  "cut_short": (_file({"a": _entry([4], 0, 16)}, F32[:10]), "holds 10.*cut short", True),
  "trailing": (_file({"a": _entry([4], 0, 16)}, F32 + bytes(8)), "holds 24.*trailing", True),
  "shape_-1": (_file({"a": _entry([-1], 0, 16)}, F32), r"'a' has shape \[-1\]", True),
  "shape_vs_bytes": (_file({"a": _entry([3], 0, 16)}, F32), "'a'.*takes 12 bytes.*hold 16", True),
  "begin_after_end": (
    _file({"a": _entry([0], 16, 0)}, F32),
    r"'a' has data_offsets \[16, 0\]",
    True,
  ),
  "negative_offset": (
    _file({"a": _entry([4], -16, 0)}, F32),
    r"'a' has data_offsets \[-16, 0\]",
    True,
  ),
  "no_offsets": (_file({"a": {"dtype": "F32", "shape": [4]}}, F32), "'a' needs dtype, shape", True),
  "unknown_dtype": (_file({"a": _entry([4], 0, 16, "F12")}, F32), "'a' has dtype 'F12'", True),
  "not_json": (_file(b'{"a": nope}', F32), "header is not JSON", True),
  "not_utf8": (_file(b'{"\xff": 1}', F32), "header is not UTF-8", True),
  "a_list": (_file(b"[1, 2]", F32), "header is a JSON list", True),
  "header_too_long": (struct.pack("<Q", 10**6) + b"{}", "header length 1000000", True),
  "too_short": (b"\x01\x02", "2 bytes long", True),
  # The official library keeps the last of two entries of one name; a checkpoint like that is
  # ambiguous, so ours refuses it.
  "key_twice": (_file(_TWICE, F32), r"names \['a'\] twice", False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_malformed_safetensors_file_is_refused_naming_it(tmp_path, name):
  data, message, official_rejects = CASES[name]
  path = tmp_path / f"{name}.safetensors"
  path.write_bytes(data)
  with pytest.raises(UserError, match=message) as refusal:
    safetensors_io.read(str(path))
  assert str(path) in str(refusal.value)
  try:
    import safetensors.numpy as official
  except ImportError:  # the convert extra's transformers brings it; without it, ours alone
    return
  if official_rejects:
    with pytest.raises(Exception, match="(?i)error|invalid|incomplete|header"):
      official.load_file(str(path))


def test_a_valid_file_reads_as_the_official_library_reads_it(tmp_path):
  tensors = {
    "b": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a": np.array([1, -2], np.int64),
    "empty": np.zeros((0, 3), np.float32),
  }
  path = str(tmp_path / "model.safetensors")
  safetensors_io.write(path, tensors, {"format": "np"})
  arrays, dtypes = safetensors_io.read(path)
  assert dtypes == {"a": "int64", "b": "float32", "empty": "float32"}
  for name, value in tensors.items():
    np.testing.assert_array_equal(arrays[name], value)
    assert arrays[name].shape == value.shape and not arrays[name].flags.writeable
  official = pytest.importorskip("safetensors.numpy").load_file(path)
  assert sorted(official) == sorted(tensors)
  for name in tensors:
    np.testing.assert_array_equal(official[name], arrays[name])


_RESIDENT = """
import sys
from deed_jax.convert import safetensors_io

def resident_mib():
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

before = resident_mib()
arrays, _ = safetensors_io.read(sys.argv[1])
after = resident_mib()
total = float(arrays["w"][-1, -1]) + float(arrays["w"][0, 0])  # two pages touched, not 128 MiB
print(after - before, arrays["w"].nbytes / 2**20, total)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_a_large_file_is_mapped_not_read(tmp_path):
  """A 128 MiB file costs a few MiB of resident memory to open (it was 128 MiB, read whole)."""
  weights = np.ones((8192, 4096), np.float32)  # 128 MiB
  weights[-1, -1] = 2.0
  path = str(tmp_path / "model.safetensors")
  safetensors_io.write(path, {"w": weights})
  del weights
  run = subprocess.run(
    [sys.executable, "-c", _RESIDENT, path], capture_output=True, text=True, check=True
  )
  grown, size, total = (float(v) for v in run.stdout.split())
  assert size == 128 and total == 3.0
  assert grown < 16, f"reading the file made the process {grown:.1f} MiB larger"


def _custom_code_dir(tmp_path, model_type: str):
  """A model directory whose config.json asks transformers to load its own Python, which would leave
  a marker file if it ever ran."""
  directory = tmp_path / "custom"
  directory.mkdir()
  marker = tmp_path / "code_ran"
  (directory / "configuration_evil.py").write_text(
    f"open({str(marker)!r}, 'w').write('ran')\n"
    "from transformers import PretrainedConfig\n"
    "class EvilConfig(PretrainedConfig):\n  model_type = 'evil'\n"
  )
  config = {
    "model_type": model_type,
    "architectures": ["BartForConditionalGeneration"],
    "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"},
  }
  (directory / "config.json").write_text(json.dumps(config))
  return directory, marker


def _convert_error(*flags: str, stdin: str = "") -> tuple[str, str]:
  """Runs `python -m deed_jax.convert` with `flags`, which must fail as a user error. -> (its one
  stderr line, all it printed)."""
  command = [sys.executable, "-m", "deed_jax.convert", *flags]
  run = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=600)
  assert run.returncode == 2, run.stderr
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0], run.stdout + run.stderr


@pytest.mark.parametrize("model_type", ["evil", "bart"])
def test_convert_never_runs_code_from_the_directory(tmp_path, model_type):
  directory, marker = _custom_code_dir(tmp_path, model_type)
  # Anyone answering "y" to transformers' question would run the code: nobody is asked.
  line, printed = _convert_error(
    f"--source={directory}", f"--workdir={tmp_path / 'out'}", stdin="y\ny\n"
  )
  assert "auto_map" in line and "never runs code" in line and "[y/N]" not in printed
  assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_invalid_config_json_is_one_error_line(tmp_path):
  directory = tmp_path / "broken"
  directory.mkdir()
  (directory / "config.json").write_text('{"model_type": "bart",')
  line, _ = _convert_error(f"--source={directory}", f"--workdir={tmp_path / 'out'}")
  assert "config.json is not valid JSON" in line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
  "content, message",
  [("", "hf_source.json is not valid JSON"), ('{"config": {}}', "lacks the source model's")],
)
def test_a_broken_hf_source_json_is_one_error_line(tmp_path, content, message):
  workdir = tmp_path / "converted"
  workdir.mkdir()
  (workdir / "hf_source.json").write_text(content)
  line, _ = _convert_error(f"--workdir={workdir}", f"--to_hf={tmp_path / 'out'}")
  assert message in line
  assert not (tmp_path / "out").exists()


def test_a_non_empty_target_is_one_error_line_and_left_alone(tmp_path):
  target = tmp_path / "taken"
  target.mkdir()
  (target / "keep.txt").write_text("mine")
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "bart"}))
  line, _ = _convert_error(f"--source={tmp_path / 'src'}", f"--workdir={target}")
  assert "already exists and is not an empty directory" in line
  assert os.listdir(target) == ["keep.txt"]
