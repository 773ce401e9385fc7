"""The method's math as pure jax functions: no Flax, no config, no files. Networks enter as callables.

| module | what |
|---|---|
| schedules | masking schedules alpha(t) (the library API `md4_jax.schedules.get_schedule` re-exports it) |
| diffusion | MD4's forward process (time draws, masking) and negative ELBO terms |
| per_token | GenMD4's per-token schedules and their ELBO terms, log q(z_t given x0), the leave-one-out term |
| ar_likelihood | the autoregressive baseline's exact next-token likelihood |
| shifted | shifted prediction: the network's input one place to the right (adapting AR checkpoints) |
| fused_head | the output layer and a per-position loss fused and chunked, with its own backward pass |
"""
