"""md4-jax: masked discrete diffusion (MD4) in JAX and Flax NNX."""

from md4_jax import allocator

# First, so that every entry point (launch.py, benchmarks, tests and their subprocesses) sets it before
# jax creates its threads.
MALLOC_CONFIGURED = allocator.configure()
