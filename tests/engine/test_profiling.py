"""train.profile_steps (engine/profiling.py): the window's syntax, and a run that writes the trace and its table."""

import json

import pytest

from md4_jax.engine import profiling
from md4_jax.errors import UserError
from md4_jax.run import modes
from tests.conftest import make_config, reference


@pytest.mark.parametrize("text, window", [("", None), ("0:1", (0, 1)), ("10:15", (10, 15)), ("3:20", (3, 20))])
def test_a_window_is_two_step_counts(text, window):
  assert profiling.parse_window(text, 20) == window


@pytest.mark.parametrize("text", ["5", "5:5", "6:5", "-1:3", "3:21", "a:b", "1:2:3", "1.5:3"])
def test_a_bad_window_is_refused_with_the_form_it_takes(text):
  with pytest.raises(UserError, match=f"train.profile_steps={text!r}: write 'A:B' .* train.num_steps=20"):
    profiling.parse_window(text, 20)


@pytest.mark.slow
def test_a_run_traces_its_window_and_tabulates_the_kernels(tmp_path, corpus_file):
  config = make_config(corpus_file, train__profile_steps="4:8", train__steps_per_call=2)
  modes.main(config, tmp_path / "run", "train", reference=reference())
  profile = tmp_path / "run" / "profile"
  (trace,) = profile.glob("plugins/profile/*/*.xplane.pb")  # what TensorBoard's profile plugin and XProf read
  assert trace.stat().st_size > 0
  table = json.loads((profile / "kernels_steps_4_8.json").read_text())
  assert table["title"].startswith("training steps 5-8 on cpu") and table["kernels"]
  assert table["device_ms_per_step"] > 0 and all(kernel["ms_per_step"] >= 0 for kernel in table["kernels"])
  assert "| 1 | `" in (profile / "kernels_steps_4_8.md").read_text()
