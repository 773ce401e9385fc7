"""`W/eval/report.md`: what `--mode eval` found, readable without TensorBoard (Markdown tables, PNG plots).

Rewritten by every `--mode eval` from the files in the workdir: the latest bound table, the bound
for each number of sampling steps T (eval.bound_steps), the sample-quality table if one was written,
and the train / eval curves from metrics.jsonl.
"""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from md4_jax import files  # noqa: E402


def write(workdir: pathlib.Path, config, step: int, bound_table: str, bound_by_steps: list[dict]) -> pathlib.Path:
  """Writes eval/report.md (+ PNGs beside it) and returns its path. bound_by_steps: [{"steps": T, "bpt":,
  "bpt_stderr":}] with T = 0 for the continuous-time bound."""
  out = workdir / "eval"
  lines = [f"# Evaluation report: {workdir.name}, step {step}", "",
           f"{config.model.kind} model, {config.model.num_layers} layers, width {config.model.width}, "
           f"data.source={config.data.source}, seq_len {config.data.seq_len}, "
           f"schedule {config.diffusion.schedule}.", "", "## Held-out bound", "", bound_table]
  if bound_by_steps:
    lines += ["## Bound versus sampling steps", "",
              "The T-step discrete-time bound is the likelihood bound of a T-step ancestral sampler; "
              "T = infinity is the continuous-time bound.", "",
              "| steps T | bits/token (+- std error) |", "|---|---|"]
    lines += [f"| {'infinity' if row['steps'] == 0 else row['steps']} | {row['bpt']:.4f} +- {row['bpt_stderr']:.4f} |"
              for row in bound_by_steps]
    _plot_bound_by_steps(bound_by_steps, out / "bound_vs_steps.png")
    lines += ["", "![bound versus steps](bound_vs_steps.png)", ""]
  samples = sorted(out.glob("samples_step_*.md"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
  if samples:
    lines += [f"## Sample quality ({samples[-1].name})", "", samples[-1].read_text()]
  if _plot_curves(workdir / "metrics.jsonl", out / "curves.png"):
    lines += ["## Training curves", "", "![train and eval curves](curves.png)", ""]
  path = out / "report.md"
  files.write_text_atomically(path, "\n".join(lines))
  return path


def _plot_bound_by_steps(rows: list[dict], path: pathlib.Path) -> None:
  finite = [row for row in rows if row["steps"] > 0]
  figure, axes = plt.subplots(figsize=(5, 3.5))
  if finite:
    axes.errorbar([r["steps"] for r in finite], [r["bpt"] for r in finite], [r["bpt_stderr"] for r in finite],
                  marker="o", label="T-step bound")
    axes.set_xscale("log")
    axes.set_xticks([r["steps"] for r in finite], [str(r["steps"]) for r in finite])
    axes.minorticks_off()
  for row in rows:
    if row["steps"] == 0:
      axes.axhline(row["bpt"], linestyle="--", color="gray", label="continuous time")
  axes.set_xlabel("sampling steps T")
  axes.set_ylabel("bits / token")
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def _plot_curves(metrics_path: pathlib.Path, path: pathlib.Path) -> bool:
  if not metrics_path.exists():
    return False
  rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
  train = [(r["step"], r["train/bits"]) for r in rows if "train/bits" in r]
  held_out = sorted({r["step"]: r["eval/bpt"] for r in rows if "eval/bpt" in r}.items())
  if not train and not held_out:
    return False
  figure, axes = plt.subplots(figsize=(6, 3.5))
  for points, label in ((train, "train (bits/token)"), (held_out, "held-out bound (bits/token)")):
    if points:
      axes.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
  axes.set_xlabel("step")
  axes.set_ylabel("bits / token")
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return True
