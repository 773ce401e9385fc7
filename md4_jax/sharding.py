"""Device mesh, logical-axis rules and the shardings of state and batches.

One code path for every device count: a single CPU is the mesh (1, 1, 1).
Parameters carry logical axis names (models/); RULES maps each to a mesh axis.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
  return Mesh(np.asarray(devices).reshape(sizes), AXES)


def _mesh_spec(logical: P, shape, mesh: Mesh) -> P:
  """Logical names -> mesh axes; a dimension the axis size does not divide stays replicated."""
  axes = []
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axis = RULES.get(name) if name is not None else None
    axes.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
  return P(*axes)


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a pytree of nnx Variables and plain arrays (plain ones are replicated)."""
  logical = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, _mesh_spec(spec, leaf.shape, mesh)),
                      logical, abstract_state, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch, mesh: Mesh):
  """This process's rows of a batch (numpy) -> one global jax.Array on the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
