"""benchmarks/common.py's FLOP count of an image train step: the same work counts the same whether the batch
goes through in one piece or in train.grad_accum microbatches (XLA's cost analysis counts a loop body once)."""

import pytest

from benchmarks import common
from md4_jax.engine import sharding
from tests import tiny_image_config
from tests.conftest import override


def image_step_flops(grad_accum):
  config = override(tiny_image_config.get_config(), train__grad_accum=grad_accum)
  modality = common.modality(config, 0)
  experiment, state, batch = common.random_train_setup(config, modality, sharding.make_mesh(config.mesh))
  return common.train_step_model_flops(experiment, state, batch, config.train.batch_size * modality.length)


@pytest.mark.slow
def test_accumulated_steps_count_the_whole_batch():
  one, source = image_step_flops(1)
  assert source == "xla_cost_analysis" and one > 0
  assert image_step_flops(4)[0] == one
