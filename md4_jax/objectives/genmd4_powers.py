"""A learned schedule's powers (GenMD4) at an eval: eval/powers_step_N.png (sorted, labelled by token) and .json."""

import json

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from md4_jax.storage import files  # noqa: E402

LABELLED = 24  # vocabularies up to this size get every token named; larger ones their extremes


def write(workdir, step: int, powers_V: np.ndarray, modality) -> list:
  """eval/powers_step_N.png and .json (process 0); returns the paths written."""
  if jax.process_index() != 0:
    return []
  out = workdir / "eval"
  out.mkdir(parents=True, exist_ok=True)
  names = [modality.token_name(v) for v in range(len(powers_V))]
  order = np.argsort(powers_V, kind="stable")
  json_path, png_path = out / f"powers_step_{step}.json", out / f"powers_step_{step}.png"
  files.write_text_atomically(json_path, json.dumps(
      {"step": step, "powers": {names[v]: float(powers_V[v]) for v in order}}, indent=1, ensure_ascii=False))
  figure, axes = plt.subplots(figsize=(min(12, 3 + 0.35 * min(len(order), 60)), 3.6))
  axes.plot(np.arange(len(order)), powers_V[order], marker="o" if len(order) <= 200 else None, markersize=3)
  shown = np.arange(len(order)) if len(order) <= LABELLED else np.r_[0:LABELLED // 2, len(order) - LABELLED // 2:len(order)]
  axes.set_xticks(shown, [names[order[i]] for i in shown], rotation=90, fontsize=8)
  axes.set_xlabel(f"{modality.token_kind} (sorted by power)")
  axes.set_ylabel("learned power w")
  axes.set_title(f"GenMD4 schedule at step {step}: alpha = 1 - t^w (w = 1: linear)")
  axes.axhline(1.0, color="grey", linewidth=0.5)
  figure.tight_layout()
  files.write_figure_atomically(png_path, figure)
  plt.close(figure)
  return [png_path, json_path]
