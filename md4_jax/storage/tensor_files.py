"""safetensors files, read one tensor at a time and written one tensor at a time.

The format (huggingface/safetensors): an 8-byte little-endian header size N, N bytes of JSON ({name: {"dtype",
"shape", "data_offsets": [begin, end]}}, optionally "__metadata__": {str: str}), then the tensors' bytes,
offsets counted from the end of the header. A sharded checkpoint adds `model.safetensors.index.json`
({"weight_map": {name: file}}).

Written here rather than read through the `safetensors` package: that package memory-maps the whole file, and
every page a load touches stays in the process's resident memory until the file is closed, so loading a
checkpoint would hold the file twice (its pages and the placed parameters). Here each tensor is one seek and one
read into its own array, freed once placed. The `safetensors` package is the tests' oracle for the format.
"""

import json
import math
import struct
from typing import Iterable, NamedTuple

import ml_dtypes
import numpy as np
from etils import epath

from md4_jax.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 << 20  # a header larger than this is not a safetensors file (the format caps it at 100 MB)


class Tensor(NamedTuple):
  """Where one tensor lies: its file, dtype, shape and byte range."""
  file: epath.Path
  dtype: np.dtype
  shape: tuple
  begin: int  # absolute byte offsets in the file
  end: int


def read_header(file) -> tuple[dict, dict]:
  """({name: Tensor}, metadata) of one .safetensors file; UserError naming the file when it is not one."""
  file = epath.Path(file)
  with file.open("rb") as stream:
    prefix = stream.read(8)
    size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
    if not 0 < size <= MAX_HEADER:
      raise UserError(f"{file} is not a safetensors file (its first 8 bytes are no header size)")
    try:
      header = json.loads(stream.read(size))
    except ValueError as error:
      raise UserError(f"{file} is not a safetensors file (its header is not JSON: {error})") from None
  metadata, tensors = header.pop("__metadata__", {}) or {}, {}
  for name, entry in header.items():
    if entry.get("dtype") not in DTYPES:
      raise UserError(f"{file}: tensor {name!r} has dtype {entry.get('dtype')!r}; this reader knows {tuple(DTYPES)}")
    begin, end = entry["data_offsets"]
    dtype, shape = np.dtype(DTYPES[entry["dtype"]]), tuple(entry["shape"])
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise UserError(f"{file}: tensor {name!r} of shape {shape} {entry['dtype']} spans {end - begin} bytes; the "
                      "file is damaged")
    tensors[name] = Tensor(file, dtype, shape, 8 + size + begin, 8 + size + end)
  return tensors, metadata


def read_checkpoint(directory) -> dict:
  """{name: Tensor} of a checkpoint directory: model.safetensors, or the shards its index names."""
  directory = epath.Path(directory)
  if (directory / INDEX).exists():
    weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      tensors.update(read_header(directory / shard)[0])
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise UserError(f"{directory / INDEX} names tensors its shards lack: {missing[:5]}; the download is incomplete")
    return tensors
  if (directory / SINGLE).exists():
    return read_header(directory / SINGLE)[0]
  raise UserError(f"{directory} holds neither {SINGLE} nor {INDEX}: not a safetensors checkpoint directory")


def read_tensor(tensor: Tensor, out: np.ndarray | None = None) -> np.ndarray:
  """The tensor's values: one seek and one read of its bytes, into `out` when given (an array of its dtype and
  size, such as the first rows of a larger one: the caller saves a copy)."""
  out = np.empty(tensor.shape, tensor.dtype) if out is None else out
  if not out.flags.c_contiguous or out.dtype != tensor.dtype or out.size != math.prod(tensor.shape):
    raise ValueError(f"read_tensor: out must be a contiguous {tensor.dtype} array of {math.prod(tensor.shape)} values")
  with tensor.file.open("rb") as stream:
    stream.seek(tensor.begin)
    count = stream.readinto(memoryview(out.reshape(-1).view(np.uint8)))
  if count != tensor.end - tensor.begin:
    raise UserError(f"{tensor.file} ends before its tensors do; the file is truncated")
  return out.reshape(tensor.shape)


def write(file, tensors: Iterable[tuple[str, np.ndarray]], shapes: dict, metadata: dict | None = None) -> None:
  """Writes a .safetensors file from (name, array) pairs produced one at a time (`tensors`, in the order of
  `shapes`: {name: (shape, dtype)}, which lays out the header first). The file is renamed into place at the end."""
  header, offset = {}, 0
  for name, (shape, dtype) in shapes.items():
    size = math.prod(shape) * np.dtype(dtype).itemsize
    header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  if metadata:
    header["__metadata__"] = {str(key): str(value) for key, value in metadata.items()}
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the format pads the header so the data starts 8-byte aligned
  file = epath.Path(file)
  temporary = file.with_name(file.name + ".tmp")
  try:
    with temporary.open("wb") as stream:
      stream.write(struct.pack("<Q", len(text)) + text)
      written = 0
      for (name, array), expected in zip(tensors, shapes):
        array, written = np.asarray(array, order="C"), written + 1
        entry = header[expected]
        if name != expected or list(array.shape) != entry["shape"] or NAMES[array.dtype] != entry["dtype"]:
          raise ValueError(f"tensor {name!r} {array.shape} {array.dtype} is not the header's {expected!r} {entry}")
        stream.write(array.tobytes())
    if written != len(shapes):
      raise ValueError(f"{written} tensors were given for a header of {len(shapes)}")
  except BaseException:
    temporary.unlink(missing_ok=True)
    raise
  temporary.replace(file)
