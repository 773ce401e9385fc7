"""Entry points restart once with glibc.malloc.hugetlb=1: XLA's large per-call buffers fault by the 2 MiB page."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from md4_jax.run import allocator
from tests.conftest import ROOT

THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")

REEXEC = """
import os, sys
sys.path.insert(0, {root!r})
print("start", flush=True)
from md4_jax.run import allocator
allocator.use_huge_pages()
print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""

PROBE = """
import resource, sys
sys.path.insert(0, {root!r})
from md4_jax.run import allocator
allocator.use_huge_pages()
import jax, jax.numpy as jnp
x = jnp.ones((24 * 2**20,), jnp.float32)
# The gathered copy (96 MiB) lives in XLA's temporary buffer, allocated and freed at every call as a
# train step's temporaries are.
step = jax.jit(lambda x: jnp.sum(x[jnp.arange(x.shape[0])[::-1]] * x))
for i in range(12):
  if i == 2:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 10)
"""


def run_script(tmp_path, text, *args, setting="huge_pages"):
  script = tmp_path / "script.py"
  script.write_text(text.format(root=str(ROOT)))
  env = {**os.environ, "MD4_JAX_MALLOC": setting, "XLA_FLAGS": ""}
  env.pop("GLIBC_TUNABLES", None)
  done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout.splitlines()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_an_entry_point_restarts_once_with_the_tunable_and_its_arguments(tmp_path):
  # "start" twice: the script ran, re-executed itself once, ran again and went on (no loop).
  assert run_script(tmp_path, REEXEC, "--a=1", "b") == ["start", "start", f"{allocator.TUNABLE} ['--a=1', 'b']"]
  assert run_script(tmp_path, REEXEC, "x", setting="default") == ["start", "None ['x']"]  # the opt-out


@pytest.mark.slow
@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="the kernel grants no huge pages")
def test_large_temporary_buffers_fault_by_the_huge_page(tmp_path):
  pages = 24 * 2**20 * 4 // 4096  # of the temporary buffer
  default = int(run_script(tmp_path, PROBE, setting="default")[-1])
  huge = int(run_script(tmp_path, PROBE)[-1])
  assert default > 0.9 * pages  # per call: glibc maps the buffer afresh and the kernel faults it in 4 KiB pages
  assert huge < 0.05 * pages  # the same mapping, in 2 MiB pages
