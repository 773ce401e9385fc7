"""What a batch of the `parallel` sampler costs against its rows' own calls, printed as one JSON line per batch size.

  python benchmarks/parallel_rows.py --workdir runs/quickstart --sampler parallel:0.9:dual --block_length 32 \
      --rows own --batches 1,8,32 --samples 64

Draws --samples unconditional samples from a trained text run at each batch size and reports, per batch: the
network calls it made (NFE), its slowest row's own calls and the mean of its rows' own calls (a row's own calls:
the distinct clock values at which it filled tokens, since each of its calls fills at least one), and tokens per
second over the sampling calls (compilation excluded). A batch whose rows advance on their own costs about its
slowest row's calls; rows held in lockstep cost the sum over blocks of each block's slowest row.
"""

import argparse
import json
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def cpu_name() -> str:
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if pathlib.Path("/proc/cpuinfo").exists() else []:
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor()


def own_calls(order_BxL: np.ndarray) -> np.ndarray:
  """[B] each row's calls: the distinct nonzero clock values of its filled positions."""
  return np.asarray([len(set(row[row > 0].tolist())) for row in order_BxL])


def measure(experiment, params, batch: int, samples: int, seed: int) -> dict:
  from md4_jax.engine import generate  # noqa: PLC0415

  nfe, slowest, mean_row, seconds = [], [], [], 0.0
  for index in range(samples // batch):
    drawn = generate.draw_samples(experiment, params, jax.random.key(seed + index),
                                  generate.unconditional_start(experiment, batch), compile_first=index == 0)
    calls_B = own_calls(drawn.order)
    nfe.append(drawn.nfe)
    slowest.append(calls_B.max())
    mean_row.append(calls_B.mean())
    seconds += drawn.seconds
  return {"batch": batch, "batches": len(nfe), "nfe_per_batch": round(float(np.mean(nfe)), 2),
          "slowest_row_calls": round(float(np.mean(slowest)), 2), "mean_row_calls": round(float(np.mean(mean_row)), 2),
          "nfe_over_slowest": round(float(np.mean(nfe) / np.mean(slowest)), 3),
          "nfe_over_mean_row": round(float(np.mean(nfe) / np.mean(mean_row)), 3),
          "tokens_per_sec": round(len(nfe) * batch * experiment.modality.length / seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a trained text run (the quick start: runs/quickstart)")
  parser.add_argument("--sampler", default="parallel:0.9:dual", help="an eval.samplers item")
  parser.add_argument("--block_length", type=int, default=32, help="sampler.block_length")
  parser.add_argument("--rows", default="own", help="sampler.parallel.rows: own | together")
  parser.add_argument("--batches", default="1,8,32", help="batch sizes")
  parser.add_argument("--samples", type=int, default=64, help="samples at each batch size (a multiple of each)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  from md4_jax.run import harness  # noqa: PLC0415

  experiment, params, _ = harness.load_run(args.workdir, sampler=args.sampler)
  overrides = {"block_length": args.block_length}
  if args.rows != "own":  # (the key is new: left out, the script also measures the code before it)
    overrides["parallel"] = {"rows": args.rows}
  experiment = experiment.with_overrides("sampler", overrides)
  started = time.perf_counter()
  for batch in (int(size) for size in args.batches.split(",")):
    result = measure(experiment, params, batch, args.samples, args.seed)
    print(json.dumps({"benchmark": "parallel_rows", "workdir": args.workdir, "sampler": args.sampler,
                      "block_length": args.block_length, "rows": args.rows, "seq_len": experiment.modality.length, **result,
                      "seconds_so_far": round(time.perf_counter() - started, 1), "machine": cpu_name(),
                      "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
  main()
