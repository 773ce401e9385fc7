"""`W/eval/report.md`: what `--mode eval` found, readable without TensorBoard (Markdown tables, PNG plots).

Rewritten by every `--mode eval` (each suite) from the files in W/eval and W/metrics.jsonl: the
most recently written bound table (step_N.md) and its bound for each number of sampling steps T (step_N.json's
bound_by_steps), the most recent sample-quality table (samples_step_N.md) and zero-shot table
(zero_shot_step_N.md), each headed by its file name, for image runs the latest sample grid and
reverse-process strip (samples/step_N.png), and the train / eval curves. Units come from the
run's modality (bits/token or bits/dim).
"""

import json

import matplotlib
from etils import epath

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from md4_jax.data import modality as modalities  # noqa: E402
from md4_jax.engine.metrics_log import read_rows  # noqa: E402
from md4_jax.storage import files


def _latest(directory: epath.Path, prefix: str, suffix: str) -> epath.Path | None:
  """The most recently written directory/<prefix><step><suffix> (an eval of an older --step counts), or None.
  epath's mtime is whole seconds, so files written within one second go by the higher step."""
  directory = epath.Path(directory)  # callers may pass a pathlib.Path, whose stat() has no .mtime
  steps = {p: int(p.name[len(prefix):-len(suffix)]) for p in directory.glob(f"{prefix}*{suffix}")
           if p.name[len(prefix):-len(suffix)].isdigit()}
  return max(steps, key=lambda p: (p.stat().mtime, steps[p])) if steps else None


def write(workdir: epath.Path, config) -> epath.Path:
  """Writes eval/report.md (+ PNGs beside it) from the eval files present; returns its path."""
  out = workdir / "eval"
  modality = modalities.load(workdir, config.data.seq_len)
  unit = f"bits/{modality.unit}" if modality else "bits/token"
  shape = (f"{modality.height}x{modality.width}x{modality.channels} images, {modality.levels} levels"
           if modality and modality.kind == "image" else f"seq_len {config.data.seq_len}")
  lines = [f"# Evaluation report: {workdir.name}", "",
           f"{config.objective} objective, {config.model.backbone} backbone, data.source={config.data.source}, "
           f"{shape}, schedule {config.diffusion.schedule}.", ""]
  bound_table = _latest(out, "step_", ".md")
  if bound_table:
    lines += [f"## Held-out bound ({bound_table.name})", "", bound_table.read_text()]
    bound_by_steps = json.loads(bound_table.with_suffix(".json").read_text()).get("bound_by_steps", [])
    if len(bound_by_steps) > 1:
      lines += ["## Bound versus sampling steps", "",
                "The T-step discrete-time bound is the likelihood bound of a T-step ancestral sampler; "
                "T = infinity is the continuous-time bound.", "",
                f"| steps T | {unit} (+- std error) |", "|---|---|"]
      lines += [f"| {'infinity' if row['steps'] == 0 else row['steps']} | {row['bpt']:.4f} +- "
                f"{row['bpt_stderr']:.4f} |" for row in bound_by_steps]
      _plot_bound_by_steps(bound_by_steps, out / "bound_vs_steps.png", unit)
      lines += ["", "![bound versus steps](bound_vs_steps.png)", ""]
  for prefix, title in (("samples_step_", "Sample quality"), ("zero_shot_step_", "Zero-shot perplexity")):
    table = _latest(out, prefix, ".md")
    if table:
      lines += [f"## {title} ({table.name})", "", table.read_text()]
  grid = _latest(workdir / "samples", "step_", ".png")
  if grid:  # image runs: the latest training-time samples and their reverse process
    lines += [f"## Samples ({grid.name})", "", f"![samples](../samples/{grid.name})", ""]
    strip = grid.with_name(grid.stem + "_process.png")
    if strip.exists():
      lines += ["Reverse process, all masked (magenta) to finished:", "", f"![reverse process](../samples/{strip.name})",
                ""]
  powers = _latest(out, "powers_step_", ".png")
  if powers:  # GenMD4: the learned schedule
    lines += [f"## Learned schedule ({powers.name})", "", "Each token's power w in alpha_t = 1 - t^w, sorted "
              "(w > 1: the token is masked later in the forward process, so unmasked earlier in sampling).", "",
              f"![learned powers]({powers.name})", ""]
  if _plot_curves(workdir / "metrics.jsonl", out / "curves.png", unit):
    lines += ["## Training curves", "", "![train and eval curves](curves.png)", ""]
  path = out / "report.md"
  files.write_text_atomically(path, "\n".join(lines))
  return path


def _plot_bound_by_steps(rows: list[dict], path: epath.Path, unit: str) -> None:
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
  axes.set_ylabel(unit)
  axes.legend()
  figure.tight_layout()
  files.write_figure_atomically(path, figure)
  plt.close(figure)


def _plot_curves(metrics_path: epath.Path, path: epath.Path, unit: str) -> bool:
  if not metrics_path.exists():
    return False
  rows = read_rows(metrics_path)
  train = [(r["step"], r["train/bits"]) for r in rows if "train/bits" in r]
  held_out = sorted({r["step"]: r["eval/bpt"] for r in rows if "eval/bpt" in r}.items())
  if not train and not held_out:
    return False
  figure, axes = plt.subplots(figsize=(6, 3.5))
  for points, label in ((train, f"train ({unit})"), (held_out, f"held-out bound ({unit})")):
    if points:
      axes.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
  axes.set_xlabel("step")
  axes.set_ylabel(unit)
  axes.legend()
  figure.tight_layout()
  files.write_figure_atomically(path, figure)
  plt.close(figure)
  return True
