"""The quickstart over three masking schedules and two learning rates: an example sweep.

  python launch.py --config configs/quickstart_sweep.py --workdir runs/sweep --sweep --dry_run  # list the runs
  python launch.py --config configs/quickstart_sweep.py --workdir runs/sweep --sweep            # run them all
  python launch.py --config configs/quickstart_sweep.py --workdir runs/sweep --sweep_index 2    # run one (a pod job)
"""

from configs import quickstart


def get_config():
  return quickstart.get_config()


def sweep(add):
  for schedule in ("linear", "cosine", "poly2"):
    for learning_rate in (1e-3, 2e-3):
      add(**{"diffusion.schedule": schedule, "train.learning_rate": learning_rate})
