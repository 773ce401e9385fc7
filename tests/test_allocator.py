"""The mallopt settings keep XLA's large temporary buffers in the heap: no fresh pages (page faults) per call."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = """
import resource
import md4_jax
import jax, jax.numpy as jnp
x = jnp.ones((24 * 2**20,), jnp.float32)
# The gathered copy (96 MiB) lives in XLA's temporary buffer, allocated and freed at every call as a
# train step's temporaries are. (A fresh *output* buffer per call is not covered: PJRT allocates those.)
step = jax.jit(lambda x: jnp.sum(x[jnp.arange(x.shape[0])[::-1]] * x))
for i in range(24):
  if i == 2:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
print(md4_jax.MALLOC_CONFIGURED, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 22)
"""


def page_faults(setting: str) -> tuple[str, int]:
  env = {**os.environ, "MD4_JAX_MALLOC": setting, "XLA_FLAGS": ""}
  done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  configured, faults = done.stdout.split()
  return configured, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_are_reused_instead_of_mapped_afresh():
  configured, tuned = page_faults("tuned")
  default_configured, default = page_faults("default")
  assert (configured, default_configured) == ("True", "False")
  pages = 24 * 2**20 * 4 // 4096  # of the temporary buffer
  assert default > 0.9 * pages  # per call: glibc maps and zeroes the buffer afresh every time
  # The heap keeps it (it grows by a buffer now and then when a free lands after the next call's allocation).
  assert tuned < 0.5 * pages
