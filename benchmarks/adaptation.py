"""The quick start's AR run adapted into BD3 (blocks of 4) and MD4: held-out bounds at 100 / 200 / 300 adaptation
steps, with and without shifted prediction and attention annealing (configs/adapt_quickstart.py).

  python benchmarks/adaptation.py --ar_workdir runs/quickstart_ar --root /tmp/adapt [--only bd3_shift,md4_both]

--ar_workdir must hold the finished quick start AR run (python launch.py --config configs/quickstart_ar.py
--workdir runs/quickstart_ar); each variant trains in ROOT/NAME through launch.py, one after another (never
beside a timed job). Prints one JSON line per variant: its eval/bpt at each evaluation, and the wall seconds.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (config variant, flags beyond configs/adapt_quickstart.py's).
# Every variant at lr 1e-3 (the first table in RESULTS.md; configs/adapt_quickstart.py's md4 takes 2e-3).
LR = "--config.train.learning_rate=1e-3"
VARIANTS = {
    "bd3_shift": ("bd3", []),
    "bd3_plain": ("bd3", ["--config.diffusion.shift=False"]),
    "md4_shift_anneal": ("md4", [LR, "--config.diffusion.shift=True", "--config.diffusion.anneal_steps=100"]),
    "md4_shift": ("md4", [LR, "--config.diffusion.shift=True"]),
    "md4_anneal": ("md4", [LR, "--config.diffusion.anneal_steps=100"]),
    "md4_plain": ("md4", [LR]),
    "md4_plain_lr2e-3": ("md4", []),
}


def run(name: str, ar_workdir: str, root: pathlib.Path) -> dict:
  variant, flags = VARIANTS[name]
  workdir = root / name
  start = time.perf_counter()
  subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", f"{ROOT / 'configs/adapt_quickstart.py'}:{variant}",
                  "--workdir", str(workdir), f"--config.model.init_from={ar_workdir}", *flags],
                 check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  seconds = time.perf_counter() - start
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  bounds = {row["step"]: (round(row["eval/bpt"], 4), round(row["eval/bpt_stderr"], 4)) for row in rows
            if "eval/bpt" in row}
  return {"variant": name, "bits_per_char_at_step": bounds, "seconds": round(seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ar_workdir", required=True)
  parser.add_argument("--root", required=True, help="where each variant's workdir goes (ROOT/NAME)")
  parser.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
  args = parser.parse_args()
  names = args.only.split(",")
  unknown = [name for name in names if name not in VARIANTS]
  if unknown:
    parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
  for name in names:
    print(json.dumps(run(name, str(pathlib.Path(args.ar_workdir).resolve()), pathlib.Path(args.root))), flush=True)


if __name__ == "__main__":
  main()
