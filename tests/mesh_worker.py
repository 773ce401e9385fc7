"""Runs a few train steps of a tiny model on several meshes of 8 simulated CPU devices.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_worker.py OUT.json
Writes, per mesh, the losses of 3 steps on fixed batches and the mesh axes and local shard
shape of a few parameters; under "scanned", the same with model.transformer.scan_layers; under "images", the same for tiny class-conditional U-Net and U-ViT models.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from md4_jax.data import modality  # noqa: E402
from md4_jax.data.sources import digits  # noqa: E402
from md4_jax.engine import sharding  # noqa: E402
from md4_jax.engine.experiment import Experiment  # noqa: E402
from tests import tiny_config, tiny_image_config  # noqa: E402

MESHES = {"1 device": (1, 1, 1), "(8,1,1)": (8, 1, 1), "(2,4,1)": (2, 4, 1), "(2,2,2)": (2, 2, 2)}
VOCAB = 28


def config(scan_layers=False):
  cfg = tiny_config.get_config()
  cfg.model.transformer.scan_layers = scan_layers
  if scan_layers:
    cfg.model.transformer.num_layers = 2
  cfg.model.transformer.width, cfg.model.transformer.num_heads = 64, 4
  cfg.train.logits_capacity = 0.7  # the gathered output layer, one gather per device block of rows
  return cfg


def run(mesh_sizes, scan_layers=False):
  devices = jax.devices()[: int(np.prod(mesh_sizes))]
  mesh = sharding.make_mesh(ConfigDict(dict(zip(sharding.AXES, mesh_sizes))), devices)
  experiment = Experiment(config(scan_layers), modality.Text(VOCAB, 16), mesh)
  state = experiment.init_state(experiment.base_key)
  rng = np.random.default_rng(0)
  losses, fallbacks = [], []
  for _ in range(3):
    batch = {"tokens": rng.integers(0, VOCAB, (8, 16), dtype=np.int32), "token_mask": np.ones((8, 16), np.int32)}
    state, metrics = experiment.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
    fallbacks.append(float(metrics["logits_fallback"]))
  params = state["params"]
  first_block = (lambda tree: tree["blocks"]) if scan_layers else (lambda tree: tree["blocks"][0])  # noqa: E731
  gate = first_block(params)["mlp"]["gate"]["kernel"]  # scanned: all layers' gates stacked
  embed = params["embed"]
  query = first_block(params)["attention"]["query"]["kernel"]
  describe = lambda x: {"spec": [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec],  # noqa: E731
                        "shard_shape": list(x.addressable_shards[0].data.shape), "shape": list(x.shape)}
  return {"losses": losses, "fallbacks": fallbacks, "gate": describe(gate[...]), "embed": describe(embed[...]),
          "query": describe(query[...]), "batch_groups": experiment.batch_groups,
          "opt_mu_gate": describe(jax.tree.leaves(first_block(state["opt_state"][1][0].mu)["mlp"]["gate"])[0])}


def run_image(mesh_sizes, backbone):
  """Losses of 3 steps of a tiny image model on fixed digit-like batches, and one conv kernel's sharding."""
  devices = jax.devices()[: int(np.prod(mesh_sizes))]
  mesh = sharding.make_mesh(ConfigDict(dict(zip(sharding.AXES, mesh_sizes))), devices)
  cfg = tiny_image_config.get_config(backbone)
  cfg.model.class_conditional = True
  experiment = Experiment(cfg, digits.DIGITS, mesh)
  state = experiment.init_state(experiment.base_key)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(3):
    tokens = rng.integers(0, 17, (8, 64), dtype=np.int32)
    batch = {"tokens": tokens, "token_mask": np.ones_like(tokens), "label": rng.integers(0, 10, 8, dtype=np.int32)}
    state, metrics = experiment.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  kernel = state["params"]["down"][0]["conv1"]["kernel"][...]
  return {"losses": losses, "conv_spec": [a for a in kernel.sharding.spec],
          "conv_shard_shape": list(kernel.addressable_shards[0].data.shape)}


IMAGE_MESHES = {name: MESHES[name] for name in ("1 device", "(2,2,2)")}
results = {name: run(sizes) for name, sizes in MESHES.items()}
results["scanned"] = {name: run(MESHES[name], scan_layers=True) for name in ("1 device", "(2,2,2)")}
results["images"] = {backbone: {name: run_image(sizes, backbone) for name, sizes in IMAGE_MESHES.items()}
                     for backbone in ("unet", "uvit")}
pathlib.Path(sys.argv[1]).write_text(json.dumps(results))
