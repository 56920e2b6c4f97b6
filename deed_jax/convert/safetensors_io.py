"""`model.safetensors` read and written with NumPy alone (bfloat16 through `ml_dtypes`), so
converting a safetensors checkpoint needs no PyTorch. (`safetensors`' own NumPy API has no bfloat16.)

The format: an 8-byte little-endian header length, a JSON header {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the tensors' little-endian bytes.
"""

from __future__ import annotations

import json
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
  """-> ({name: array in its stored dtype}, {name: dtype name})."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise UserError(f"{path} is not a safetensors file (it is {len(data)} bytes long).")
  (length,) = struct.unpack("<Q", data[:8])
  if length > min(_MAX_HEADER, len(data) - 8):
    raise UserError(f"{path} is not a safetensors file (header length {length}).")
  header = json.loads(data[8 : 8 + length])
  body = memoryview(data)[8 + length :]
  arrays, dtypes = {}, {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in _CODES:
      raise UserError(
        f"{path}: tensor {name!r} has dtype {entry['dtype']}, which deed-jax does not "
        f"read (supported: {sorted(_CODES)})."
      )
    dtypes[name] = _CODES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    dtype = numpy_dtype(dtypes[name]).newbyteorder("<")
    arrays[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(entry["shape"])
  return arrays, dtypes


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
