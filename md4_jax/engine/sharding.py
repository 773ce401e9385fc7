"""Device mesh, logical-axis rules and the shardings of state and batches.

One code path for every device count: a single CPU is the mesh (1, 1, 1).
Parameters carry logical axis names (models/); RULES maps each to a mesh axis.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from md4_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis (None: replicated along that dimension).
RULES = {
    "vocab": "tensor",
    "embed": "fsdp",
    "embed_out": None,
    "heads": "tensor",
    "kv": None,
    "mlp": "tensor",
    "layers": None,  # the leading axis of scanned layers' stacked parameters (model.transformer.scan_layers)
}

BATCH_AXES = ("data", "fsdp")  # examples are split over both data-parallel axes


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh from `config.mesh`; one size may be -1 (the rest)."""
  devices = jax.devices() if devices is None else devices
  sizes = [int(mesh_config[axis]) for axis in AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"mesh sizes {dict(zip(AXES, sizes))}: each must be positive, and at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"mesh {dict(zip(AXES, sizes))} cannot divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"but {len(devices)} are visible; set config.mesh.data=-1 to use them all")
  mesh = Mesh(np.asarray(devices).reshape(sizes), AXES)
  _check_process_layout(mesh)
  return mesh


def _check_process_layout(mesh: Mesh) -> None:
  """Process p must hold the p-th contiguous block of batch rows (what the input pipeline feeds it)."""
  processes, index = jax.process_count(), jax.process_index()
  if processes == 1:
    return
  shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES)
  rows = sorted({i for idx in batch_sharding(mesh).addressable_devices_indices_map((shards,)).values()
                 for i in range(shards)[idx[0]]})
  block = shards // processes
  if shards % processes or rows != list(range(index * block, (index + 1) * block)):
    raise UserError(f"mesh {dict(mesh.shape)} over {processes} processes: each process must hold its own "
                    "block of the batch, so mesh.data x mesh.fsdp must be a multiple of the process count and "
                    "mesh.tensor at most the devices of one process")


def _mesh_spec(logical: P, shape, mesh: Mesh) -> P:
  """Logical names -> mesh axes; a dimension the axis size does not divide stays replicated."""
  axes = []
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axis = RULES.get(name) if name is not None else None
    axes.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
  return P(*axes)


REPLICATION_LIMIT = 1 << 20  # elements: a parameter this large may not lose a declared sharding


def _path_name(path) -> str:
  """'blocks/0/mlp/gate/kernel' from a pytree key path (nnx's trailing `.value` dropped)."""
  parts = [str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path]
  return "/".join(part for part in parts if part != "value")


def check_declared_sharding(abstract_params, mesh: Mesh, limit: int = REPLICATION_LIMIT) -> None:
  """Refuses a mesh on which a large parameter would be silently replicated.

  A dimension whose logical name maps to a mesh axis of size > 1 that does not
  divide it is replicated instead (see `_mesh_spec`); for parameters of `limit`
  elements or more that is an error naming the parameter and the fix.
  """
  logical = nnx.get_partition_spec(abstract_params)
  problems = []
  for (path, spec), leaf in zip(jax.tree.leaves_with_path(logical, is_leaf=lambda x: isinstance(x, P)),
                                jax.tree.leaves(abstract_params)):
    if math.prod(leaf.shape) < limit:
      continue
    for name, dim in zip(tuple(spec), leaf.shape):
      axis = RULES.get(name) if name is not None else None
      if axis is not None and mesh.shape[axis] > 1 and dim % mesh.shape[axis]:
        problems.append(f"{_path_name(path)} {tuple(leaf.shape)}: its {name!r} dimension {dim} "
                        f"does not divide over mesh.{axis}={mesh.shape[axis]}")
  if problems:
    raise UserError("these parameters would be replicated instead of sharded as declared: " + "; ".join(problems)
                    + ". Choose mesh sizes that divide them (e.g. move devices from mesh.tensor to mesh.fsdp), "
                    "or change the model's sizes.")


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a pytree of nnx Variables and plain arrays (plain ones are replicated)."""
  logical = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, _mesh_spec(spec, leaf.shape, mesh)),
                      logical, abstract_state, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (so every process can read it)."""
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh: Mesh):
  """This process's rows of a batch (numpy) -> one global jax.Array on the mesh."""
  sharding = batch_sharding(mesh)
  with jax.transfer_guard_host_to_device("allow"):  # the one intended upload per step (the loop disallows others)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicated_array(host_array, mesh: Mesh):
  """The same numpy array on every process -> a replicated global jax.Array (an explicit upload)."""
  with jax.transfer_guard_host_to_device("allow"):
    return jax.make_array_from_callback(host_array.shape, replicated(mesh), lambda index: host_array[index])
