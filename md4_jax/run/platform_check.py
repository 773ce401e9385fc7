"""What this process runs on: the installed jax and flax (checked before either is imported), the backend and
devices JAX found, and an accelerator the system has but JAX does not use.

pip cannot express that flax and jax move together: flax 0.12.8 declares `jax>=0.10.0` yet fails to import on
jax 0.11.2 (`jax.experimental.hijax` has no `HiPrimitive`). `version_problem` names such a pair before the
import fails deep inside flax. A GPU whose JAX is the CPU build (pip replaced a CUDA jax, or the plugin does not
match jaxlib) silently trains on the CPU: `unused_accelerator` names it in one line with the install that fixes it.
"""

import glob
import importlib.metadata
import os
import shutil
import subprocess

# The jax range this code is tested on (pyproject.toml says the same), and the first flax that imports on each
# jax minor version: 0.10.x was tested with flax 0.12.8 (CPU), 0.11.x with flax 0.12.10 (the lent H200's image).
JAX_RANGE = ((0, 10, 2), (0, 12))
FIRST_FLAX_FOR_JAX = {(0, 10): (0, 12, 8), (0, 11): (0, 12, 10)}
INSTALL_LINES = {"gpu": 'pip install -e ".[cuda12]" (or ".[cuda13]" for a CUDA 13 driver)',
                 "tpu": 'pip install -e ".[tpu]"'}


def _version(package: str) -> tuple[int, ...] | None:
  try:
    text = importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None
  return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _dotted(version) -> str:
  return ".".join(map(str, version))


def version_problem() -> str | None:
  """A message if the installed jax and flax are known not to work together (or are missing), else None.
  Reads package metadata only: call it before importing either."""
  jax_version, flax_version = _version("jax"), _version("flax")
  if jax_version is None or flax_version is None:
    return "jax or flax is not installed: run the README's install command (pip install -e .)"
  first_flax = FIRST_FLAX_FOR_JAX.get(jax_version[:2])
  if first_flax and flax_version < first_flax:
    return (f"flax {_dotted(flax_version)} does not work with jax {_dotted(jax_version)} (flax and jax move "
            f"together): pip install 'flax>={_dotted(first_flax)},<0.13' keeps this jax")
  return None


def untested_jax() -> str | None:
  """A warning if the installed jax is outside the tested range, else None."""
  version = _version("jax")
  low, high = JAX_RANGE
  if version is not None and not low <= version < high:
    return (f"warning: jax {_dotted(version)} is outside the range this code is tested with ({_dotted(low)} to "
            f"{_dotted(high)}.x excluded); if something fails, install the tested set: pip install -e . -c "
            "constraints.txt")
  return None


def visible_accelerator() -> str | None:
  """"gpu" or "tpu" if the system shows one (whatever JAX uses), else None: an NVIDIA GPU that `nvidia-smi -L`
  lists, or a TPU's /dev/accel* or /dev/vfio device."""
  smi = shutil.which("nvidia-smi")
  if smi:
    try:
      listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
      if listed.returncode == 0 and "GPU" in listed.stdout:
        return "gpu"
    except (OSError, subprocess.SubprocessError):
      pass
  if glob.glob("/dev/accel[0-9]*") or (os.path.isdir("/dev/vfio") and glob.glob("/dev/vfio/[0-9]*")):
    return "tpu"
  return None


def describe_devices(jax) -> str:
  """"jax 0.10.2 on cpu: 1 device (cpu)" for the line launch.py prints at start-up."""
  devices = jax.devices()
  kinds = sorted({device.device_kind for device in devices})
  return (f"jax {jax.__version__} on {jax.default_backend()}: {len(devices)} device{'s' * (len(devices) > 1)} "
          f"({', '.join(kinds)})" + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))


def unused_accelerator(jax) -> str | None:
  """A one-line warning if the system has a GPU or TPU but JAX runs on the CPU, naming the cause and the fix."""
  if jax.default_backend() != "cpu":
    return None
  kind = visible_accelerator()
  if kind is None:
    return None
  plugin = "CUDA plugin (jax-cuda12-plugin / jax-cuda13-plugin)" if kind == "gpu" else "TPU runtime (libtpu)"
  return (f"warning: this machine has a {kind.upper()}, but JAX runs on the CPU: JAX's {plugin} is missing or "
          f"does not match jax {jax.__version__} (a plain `pip install` may have replaced an accelerator build of "
          f"JAX). Fix: {INSTALL_LINES[kind]}")
