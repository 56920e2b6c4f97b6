"""`model.safetensors` read and written with NumPy alone (bfloat16 through `ml_dtypes`), so
converting a safetensors checkpoint needs no PyTorch. (`safetensors`' own NumPy API has no bfloat16.)

The format: an 8-byte little-endian header length, a JSON header {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the tensors' little-endian bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from deed_jax.errors import UserError

# safetensors dtype codes <-> the dtype names recorded for the way back (PyTorch's names).
_CODES = {
  "F64": "float64",
  "F32": "float32",
  "F16": "float16",
  "BF16": "bfloat16",
  "I64": "int64",
  "I32": "int32",
  "I16": "int16",
  "I8": "int8",
  "U8": "uint8",
  "BOOL": "bool",
}
_NAMES = {name: code for code, name in _CODES.items()}
_NUMPY = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "bool": np.dtype(bool)}
_MAX_HEADER = 100 * 2**20  # safetensors refuses larger headers too


def numpy_dtype(name: str) -> np.dtype:
  """A recorded dtype name ('bfloat16', 'float32', ...) as a NumPy dtype."""
  return _NUMPY.get(name) or np.dtype(name)


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """-> ({name: array in its stored dtype}, {name: dtype name}).

  The file is checked as the format's specification and the official `safetensors` library check it
  (a malformed file is refused with a `UserError` naming the file and the tensor, never converted into
  wrong weights) and memory-mapped, not read: the arrays are read-only views of the mapping, so a
  file costs resident memory only as its tensors are used."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise UserError(f"{path} is not a safetensors file (it is {size} bytes long).")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(_MAX_HEADER, size - 8):
      raise UserError(
        f"{path} is not a safetensors file: its header length {length} exceeds the file "
        f"({size} bytes) or {_MAX_HEADER} bytes."
      )
    header = _parse_header(path, f.read(length))
  data_start = 8 + length
  entries = _check_entries(path, header, size - data_start)
  data = (
    np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    if size > data_start
    else np.zeros((0,), np.uint8)
  )
  arrays, dtypes = {}, {}
  for name, (code, shape, begin, end) in entries.items():
    dtypes[name] = _CODES[code]
    dtype = numpy_dtype(dtypes[name]).newbyteorder("<")
    arrays[name] = data[begin:end].view(dtype).reshape(shape)
  return arrays, dtypes


def _parse_header(path: str, raw: bytes) -> dict:
  """The JSON header: UTF-8, one object, no key twice."""

  def unique(pairs):
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
      raise UserError(f"{path} is not a valid safetensors file: its header names {repeated} twice.")
    return dict(pairs)

  try:
    header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
  except UnicodeDecodeError:
    raise UserError(f"{path} is not a valid safetensors file: its header is not UTF-8.") from None
  except json.JSONDecodeError as e:
    raise UserError(
      f"{path} is not a valid safetensors file: its header is not JSON ({e})."
    ) from None
  if not isinstance(header, dict):
    raise UserError(
      f"{path} is not a valid safetensors file: its header is a JSON {type(header).__name__}, "
      "not an object of tensors."
    )
  metadata = header.get("__metadata__", {})
  if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
    raise UserError(f"{path}: __metadata__ must map names to strings, not {metadata!r}.")
  return header


def _check_entries(path: str, header: dict, data_size: int) -> dict[str, tuple]:
  """{name: (dtype code, shape, begin, end)}, every entry well formed, their byte ranges sorted,
  contiguous from 0, not overlapping, and covering the data exactly."""
  entries = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
      raise UserError(f"{where} needs dtype, shape and data_offsets; its entry is {entry!r}.")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in _CODES:
      raise UserError(
        f"{where} has dtype {code!r}, which deed-jax does not read (supported: {sorted(_CODES)})."
      )
    if not _naturals(shape):
      raise UserError(f"{where} has shape {shape!r}; a shape is a list of integers >= 0.")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
      raise UserError(
        f"{where} has data_offsets {offsets!r}; they must be [begin, end], begin <= end."
      )
    nbytes = math.prod(shape) * numpy_dtype(_CODES[code]).itemsize
    if offsets[1] - offsets[0] != nbytes:
      raise UserError(
        f"{where}: shape {shape} of {code} takes {nbytes} bytes but data_offsets {offsets} hold "
        f"{offsets[1] - offsets[0]}."
      )
    entries[name] = (code, tuple(shape), offsets[0], offsets[1])
  position = 0
  for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
    if begin != position:
      problem = (
        "overlaps the tensor before it" if begin < position else "leaves unused bytes before it"
      )
      raise UserError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) {problem}.")
    position = end
  if position != data_size:
    raise UserError(
      f"{path}: the tensors cover {position} bytes but the file holds {data_size} after its header "
      f"({'cut short' if position > data_size else 'trailing bytes'})."
    )
  return entries


def _naturals(values) -> bool:
  return isinstance(values, list) and all(
    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
  )


def write(
  path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
  """Write `tensors` (each in its own dtype) as a safetensors file."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    dtype_name = "bfloat16" if array.dtype == ml_dtypes.bfloat16 else array.dtype.name
    if dtype_name not in _NAMES:
      raise UserError(
        f"Tensor {name!r} has dtype {array.dtype}, which safetensors cannot hold here."
      )
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {
      "dtype": _NAMES[dtype_name],
      "shape": list(array.shape),
      "data_offsets": [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = metadata
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for chunk in chunks:
      f.write(chunk)
