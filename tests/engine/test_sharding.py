"""Sharding: meshes of 8 simulated devices give one device's losses, and shard parameters as declared."""

import json
import os
import subprocess
import sys
import types

import jax
import pytest
from flax import nnx

from md4_jax.engine import sharding
from md4_jax.errors import UserError
from md4_jax.models.transformer import Transformer
from tests.conftest import ROOT, transformer_config

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("mesh") / "mesh.json"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run([sys.executable, str(ROOT / "tests/mesh_worker.py"), str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize("mesh", ["(8,1,1)", "(2,4,1)", "(2,2,2)"])
def test_meshes_give_one_devices_losses(mesh_results, mesh):
  for loss, reference in zip(mesh_results[mesh]["losses"], mesh_results["1 device"]["losses"]):
    assert abs(loss - reference) / abs(reference) < 1e-5


@pytest.mark.parametrize("backbone", ["unet", "uvit"])
def test_image_models_shard_on_the_same_mesh_with_one_devices_losses(mesh_results, backbone):
  results = mesh_results["images"][backbone]
  for loss, reference in zip(results["(2,2,2)"]["losses"], results["1 device"]["losses"]):
    assert abs(loss - reference) / abs(reference) < 1e-5
  cube = results["(2,2,2)"]
  assert cube["conv_spec"] == [None, None, "fsdp", "tensor"] and cube["conv_shard_shape"] == [3, 3, 16, 16]


def test_output_layer_gather_ran_on_a_sharded_mesh(mesh_results):
  # One gather per device block of rows; on (2,2,2) (4 blocks of 2 rows) some steps fit the capacity.
  assert mesh_results["(2,2,2)"]["batch_groups"] == 4
  assert 0.0 in mesh_results["(2,2,2)"]["fallbacks"]


def test_parameters_and_optimizer_state_are_sharded_as_declared(mesh_results):
  fsdp4 = mesh_results["(2,4,1)"]
  assert fsdp4["gate"]["spec"] == ["fsdp", "tensor"] and fsdp4["gate"]["shard_shape"] == [16, 256]
  assert fsdp4["embed"]["shard_shape"] == [29, 16]  # 29 ids = 28 tokens + mask
  cube = mesh_results["(2,2,2)"]
  assert cube["gate"]["shard_shape"] == [32, 128]  # embed over fsdp=2, mlp over tensor=2
  assert cube["query"]["shard_shape"] == [32, 2, 16]  # heads over tensor
  assert cube["embed"]["spec"] == [None, "fsdp"]  # 29 does not divide over tensor=2: replicated (small)
  assert cube["opt_mu_gate"]["shard_shape"] == cube["gate"]["shard_shape"]  # Adam moments follow the params


def test_scanned_layers_shard_like_unrolled_ones_with_one_devices_losses(mesh_results):
  scanned = mesh_results["scanned"]
  for loss, reference in zip(scanned["(2,2,2)"]["losses"], scanned["1 device"]["losses"]):
    assert abs(loss - reference) / abs(reference) < 1e-5
  cube = scanned["(2,2,2)"]
  assert cube["gate"]["spec"] == [None, "fsdp", "tensor"]  # the stacked "layers" axis is not sharded
  assert cube["gate"]["shard_shape"] == [2, 32, 128]  # each device: both layers' slices
  assert cube["opt_mu_gate"]["shard_shape"] == cube["gate"]["shard_shape"]


def test_a_large_parameter_that_would_lose_its_sharding_is_refused():
  abstract = nnx.state(nnx.eval_shape(lambda: Transformer(transformer_config(vocab_size=27, seq_len=8, num_layers=1,
                                                                             width=32, num_heads=2), nnx.Rngs(0))))
  tensor3 = types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 3})  # 27 + 1 ids: not a multiple of 3
  sharding.check_declared_sharding(abstract, tensor3)  # small parameters may be replicated
  with pytest.raises(UserError, match=r"; embed \(28, 32\): its 'vocab' dimension 28 does not divide "
                                      r"over mesh.tensor=3.*mesh.fsdp"):
    sharding.check_declared_sharding(abstract, tensor3, limit=0)


def test_mesh_sizes_are_checked():
  with pytest.raises(UserError, match="needs 4 devices"):
    sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  with pytest.raises(UserError, match="at most one -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
