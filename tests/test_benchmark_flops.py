"""benchmarks/common.py's FLOP count of an image train step: the same work counts the same whether the batch
goes through in one piece or in train.grad_accum microbatches (XLA's cost analysis counts a loop body once)."""

import pytest

from benchmarks import common
from md4_jax import sharding
from md4_jax.train import Experiment
from tests import tiny_image_config
from tests.conftest import override


def image_step_flops(grad_accum):
  config = override(tiny_image_config.get_config(), train__grad_accum=grad_accum)
  mesh = sharding.make_mesh(config.mesh)
  modality = common.modality(config, 0)
  experiment = Experiment(config, modality, mesh)
  state = experiment.init_state(experiment.base_key)
  batch = sharding.global_batch(common.random_batch(modality, config.train.batch_size), mesh)
  return common.train_step_model_flops(experiment, state, batch, config.train.batch_size * modality.length)


def test_accumulated_steps_count_the_whole_batch():
  one, source = image_step_flops(1)
  assert source == "xla_cost_analysis" and one > 0
  assert image_step_flops(4)[0] == one
