"""Every shipped config validates and builds (shapes only, no compute)."""

import importlib

import jax
import pytest
from flax import nnx

from md4_jax import config_check, models, objectives
from md4_jax.data import pipeline
from tests.conftest import reference


@pytest.mark.parametrize("module", ["configs.base", "configs.quickstart", "configs.text8", "configs.owt_small",
                                    "configs.owt_medium", "configs.fineweb_edu", "configs.lm1b", "configs.quickstart_ar",
                                    "configs.quickstart_sweep", "tests.tiny_config"])
def test_config_validates_and_builds(module):
  config = importlib.import_module(module).get_config()
  config_check.check_keys(config, reference())
  config_check.check_values(config)
  config_check.check_scope(config, reference())
  if config.data.source == "textfile":
    config.data.source = "embedded"  # the shapes, without a file
  make_model = models.backbone_factory(config, pipeline.nominal_modality(config.data),
                                       objectives.get(config.objective).network_requirements)
  model = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  assert num_params > 0


def test_base_config_comments_every_key():
  source = open(importlib.import_module("configs.base").__file__).read()
  for key in config_check.flatten(reference()):
    line = next(line for line in source.splitlines() if f"config.{key} = " in line)
    assert "#" in line, f"configs/base.py: {key} has no comment"
