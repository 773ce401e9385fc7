"""storage/tensor_files.py against the `safetensors` package (the format's own implementation) as the oracle."""

import json

import ml_dtypes
import numpy as np
import pytest

from md4_jax.errors import UserError
from md4_jax.storage import tensor_files

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def arrays():
  rng = np.random.default_rng(0)
  return {"a.weight": rng.normal(size=(3, 5)).astype(np.float32),
          "b.bias": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
          "c.half": rng.normal(size=(2, 2, 2)).astype(np.float16),
          "d.ids": np.arange(6, dtype=np.int64).reshape(2, 3),
          "e.scalar": np.asarray(1.5, np.float64)}


def test_reads_what_the_safetensors_package_writes(tmp_path):
  values = arrays()
  safetensors_numpy.save_file(values, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  tensors = tensor_files.read_checkpoint(tmp_path)
  assert set(tensors) == set(values)
  for name, value in values.items():
    read = tensor_files.read_tensor(tensors[name])
    assert read.dtype == value.dtype and read.shape == value.shape
    np.testing.assert_array_equal(read, value)


def test_the_safetensors_package_reads_what_we_write(tmp_path):
  values = arrays()
  path = tmp_path / "ours.safetensors"
  tensor_files.write(path, iter(values.items()), {name: (v.shape, v.dtype) for name, v in values.items()},
                     metadata={"step": 3})
  loaded = safetensors_numpy.load_file(str(path))
  for name, value in values.items():
    np.testing.assert_array_equal(loaded[name], value)
    assert loaded[name].dtype == value.dtype
  assert tensor_files.read_header(path)[1] == {"step": "3"}


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path):
  values = arrays()
  names = sorted(values)
  shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
  for file, members in shards.items():
    safetensors_numpy.save_file({name: values[name] for name in members}, str(tmp_path / file))
  weight_map = {name: file for file, members in shards.items() for name in members}
  (tmp_path / tensor_files.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  tensors = tensor_files.read_checkpoint(tmp_path)
  np.testing.assert_array_equal(tensor_files.read_tensor(tensors["d.ids"]), values["d.ids"])
  weight_map["z.missing"] = "model-00001-of-00002.safetensors"
  (tmp_path / tensor_files.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  with pytest.raises(UserError, match=r"names tensors its shards lack: \['z.missing'\]"):
    tensor_files.read_checkpoint(tmp_path)


def test_damaged_files_are_named(tmp_path):
  with pytest.raises(UserError, match="holds neither model.safetensors nor model.safetensors.index.json"):
    tensor_files.read_checkpoint(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
  with pytest.raises(UserError, match="is not a safetensors file"):
    tensor_files.read_checkpoint(tmp_path)
  values = arrays()
  safetensors_numpy.save_file(values, str(tmp_path / "model.safetensors"))
  data = (tmp_path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[:-10])
  tensors = tensor_files.read_checkpoint(tmp_path)
  last = max(tensors.values(), key=lambda tensor: tensor.end)
  with pytest.raises(UserError, match="is truncated"):
    tensor_files.read_tensor(last)


def test_writing_checks_each_tensor_against_the_header(tmp_path):
  shapes = {"a": ((2,), np.float32), "b": ((3,), np.float32)}
  with pytest.raises(ValueError, match="not the header's 'b'"):
    pairs = [("a", np.zeros(2, np.float32)), ("b", np.zeros(4, np.float32))]
    tensor_files.write(tmp_path / "x.safetensors", iter(pairs), shapes)
  with pytest.raises(ValueError, match="1 tensors were given for a header of 2"):
    tensor_files.write(tmp_path / "x.safetensors", iter([("a", np.zeros(2, np.float32))]), shapes)
  assert not (tmp_path / "x.safetensors").exists()
