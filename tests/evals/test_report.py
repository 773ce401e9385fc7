"""eval/report.md is assembled from the eval files: the most recently written table of each suite."""

import json
import os

from md4_jax.evals import report
from tests.conftest import reference


def test_report_shows_the_most_recently_written_table_of_each_suite(tmp_path):
  out = tmp_path / "eval"
  out.mkdir()
  tables = {"step_700": "| bound at 700 |", "step_250": "| bound at 250 |", "zero_shot_step_700": "| zs 700 |"}
  for stem, table in tables.items():
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"bound_by_steps": [
        {"steps": 0, "bpt": 1.0, "bpt_stderr": 0.1}, {"steps": 16, "bpt": 1.2, "bpt_stderr": 0.1}]}))
  os.utime(out / "step_700.md", ns=(1, 1))  # written before step 250's (an older checkpoint evaluated later)
  text = report.write(tmp_path, reference()).read_text()
  assert "## Held-out bound (step_250.md)" in text and "| bound at 250 |" in text and "bound at 700" not in text
  assert "## Zero-shot perplexity (zero_shot_step_700.md)" in text and "| zs 700 |" in text
  assert "Sample quality" not in text and "| 16 | 1.2000 +- 0.1000 |" in text
  assert (out / "bound_vs_steps.png").stat().st_size > 0


def test_files_written_within_one_second_go_by_the_higher_step(tmp_path):
  # A fast run writes step 6's and step 12's files in the same second (epath's mtime is whole seconds); glob
  # order must not decide. Written in both orders, so either listing order would fail without the tie-break.
  for first, second in ((6, 12), (12, 6)):
    out = tmp_path / f"eval_{first}"
    out.mkdir()
    for step in (first, second):
      (out / f"powers_step_{step}.png").write_bytes(b"png")
      os.utime(out / f"powers_step_{step}.png", (1_700_000_000.25, 1_700_000_000.25))
    assert report._latest(out, "powers_step_", ".png").name == "powers_step_12.png"
