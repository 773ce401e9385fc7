"""Multi-host start-up through `jax.distributed` (the one distributed engine; nothing home-made).

Every process runs the same command. On Cloud TPU pods and under SLURM (one task per
host) JAX finds the coordinator itself; elsewhere the three flags name it.
"""

import os

import jax

from md4_jax.errors import UserError


def cluster_detected() -> bool:
  """True where `jax.distributed.initialize()` can configure itself: a multi-task SLURM job or a TPU pod slice."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
  tpu_workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return slurm_tasks > 1 or len(tpu_workers) > 1


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Joins this process to the job: explicitly (all three flags), automatically on a cluster, or not at all."""
  explicit = [coordinator_address, num_processes, process_id]
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise UserError("multi-host needs all of --coordinator_address=HOST:PORT, --num_processes=N and "
                      "--process_id=I (0..N-1), the same address on every process")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=300)
  elif cluster_detected():
    jax.distributed.initialize()
