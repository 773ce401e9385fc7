"""md4-jax: masked discrete diffusion (MD4) in JAX and Flax NNX."""
