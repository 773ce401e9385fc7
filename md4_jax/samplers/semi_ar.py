"""semi_ar: left-to-right blocks of sampler.block_length positions, each filled by the inner sampler
sampler.semi_ar.inner given the blocks before it."""

import dataclasses

import jax.numpy as jnp
import ml_collections


def config_group() -> ml_collections.ConfigDict:
  """sampler.semi_ar.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.inner = "confidence"  # the sampler within each block: "ancestral" | "mean" | "exact" | "confidence" | ...
  return group


def check_config(config, length: int) -> None:
  semi_ar_blocks(config.sampler.block_length, config.sampler.steps, length)


def semi_ar_blocks(block_length: int, steps: int, length: int) -> int:
  """The number of semi_ar blocks; ValueError unless the blocks tile the length and share the steps evenly."""
  if block_length <= 0 or length % block_length:
    raise ValueError(f"sampler.block_length={block_length} must divide the sequence length {length} "
                     "(data.seq_len) for sampler.name='semi_ar'")
  num_blocks = length // block_length
  if steps % num_blocks:
    raise ValueError(f"sampler.steps={steps} must be a multiple of the {num_blocks} semi_ar blocks "
                     f"(sequence length / block_length), e.g. {num_blocks * 8}")
  return num_blocks


def blocks(settings, length: int):
  """[(inner settings, in_block [L] bool), ...] left to right: settings.steps shared evenly by the blocks."""
  num_blocks = semi_ar_blocks(settings.block_length, settings.steps, length)
  inner = dataclasses.replace(settings, name=settings.inner, steps=settings.steps // num_blocks)
  block_L = jnp.arange(length) // settings.block_length
  return [(inner, block_L == block) for block in range(num_blocks)]  # static: left to right
