"""Transparent huge pages for XLA's large per-step buffers: page faults by the 2 MiB instead of the 4 KiB.

Each train step on the CPU allocates XLA's temporary buffer (hundreds of MB) and frees it. glibc serves
blocks that large with mmap/munmap (its mmap threshold stops adapting at 32 MiB), so the kernel maps and
zeroes the buffer afresh every step, ~100k page faults per quickstart step. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc madvise such mappings for transparent huge pages (the kernel's
default "madvise" mode grants them), so the same memory arrives in 512x fewer faults. Tunables are read
only when a process starts: entry points (launch.py, benchmarks) call `use_huge_pages()` first, which
restarts the interpreter once (execve: same pid, same arguments) with GLIBC_TUNABLES extended.

Rejected after measuring (benchmarks/RESULTS.md, 2026-12-02): mallopt with one arena, no mmap and no
trimming keeps the buffer in the heap (12% faster quickstart steps), but at larger shapes the single heap
fragments on some machines (a Xeon: peak RSS 1.6 -> 4.7 GB, step 0.79 -> 1.14 s). Linux with glibc only;
MD4_JAX_MALLOC=default opts out.

A Ctrl-C while the restarted interpreter starts would land in CPython's own start-up ("Fatal Python error:
init_import_site") or in the first imports: SIGINT is blocked across the restart (the signal mask survives execve,
and a signal that arrives meanwhile stays pending), and the second `use_huge_pages()` call unblocks it, after the
entry point has put its handler in place, so that handler sees it.
"""

import os
import platform
import signal
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_SIGINT_HELD = "MD4_JAX_SIGINT_HELD"  # set across the restart when this module blocked SIGINT for it


def wanted() -> bool:
  return (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
          and os.environ.get("MD4_JAX_MALLOC") != "default")


def in_effect() -> bool:
  """Whether this process started with TUNABLE (glibc reads it only at start-up)."""
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def use_huge_pages() -> None:
  """Re-executes this process with TUNABLE in GLIBC_TUNABLES unless it is there (or not wanted): call it
  before importing jax, at the top of a script run as `python script.py ...`."""
  if os.environ.pop(_SIGINT_HELD, None):  # the restarted process: a Ctrl-C held during its start arrives now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
  if not wanted() or in_effect():
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, TUNABLE)))
  if signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}):
    os.environ[_SIGINT_HELD] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
