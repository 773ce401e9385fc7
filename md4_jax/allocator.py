"""Keep XLA's large per-step temporary buffers in the heap instead of fresh mmap'd pages.

Each train step on the CPU allocates XLA's temp buffer (hundreds of MB) and frees it. glibc serves
blocks that large with mmap/munmap (its mmap threshold stops adapting above 32 MiB, and XLA's worker
threads allocate from per-thread arenas capped at 64 MiB), so the kernel maps and zeroes ~100k pages per
step: a third of a quickstart's CPU time went to page faults. One arena, no mmap and no trimming keep
the freed buffer for the next step; the cost is that the process holds its peak heap (the largest
step's temporaries) until it exits. Linux with glibc only; set MD4_JAX_MALLOC=default to opt out.
"""

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameter numbers
_NEVER_TRIM = 2**31 - 1  # bytes of free heap top kept before returning it to the kernel (an int)


def configure() -> bool:
  """Sets the three mallopt parameters (before jax starts its threads); True when they were applied."""
  if not sys.platform.startswith("linux") or os.environ.get("MD4_JAX_MALLOC") == "default":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and other libcs without glibc's mallopt
    return False
  return all(mallopt(option, value) == 1 for option, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM)))
