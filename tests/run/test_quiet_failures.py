"""What a user sees when something fails: a few lines, the `error:` or `warning:` line last or alone, no
traceback, no library noise (issue 32's cases, each run through launch.py), and no work lost."""

import json
import math
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from md4_jax.engine import metrics_log
from md4_jax.run import allocator
from tests.conftest import CORPUS, ROOT, launch, launch_tiny

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

# Big enough that a damaged checkpoint leaves reads in flight (the noise needs them; the 27k-parameter tiny
# model's few arrays are read before the failure is noticed), small enough to train in seconds.
WIDE = ("--config.model.transformer.width=128", "--config.model.transformer.num_layers=4", "--config.model.transformer.num_heads=4")
STEPS = ("--config.train.num_steps=6", "--config.train.checkpoint_every=2", "--config.train.eval_every=6")


PROGRESS = re.compile(r"^(compiling|train|evaluating): ")


def shown_lines(stderr: str, progress: bool = False) -> list[str]:
  """The lines a terminal shows: a progress bar's \\r-rewrites collapse to their last state, blanks dropped;
  the progress bar's own lines too unless `progress`."""
  lines = [line.rsplit("\r", 1)[-1].rstrip() for line in stderr.split("\n")]
  return [line for line in lines if line.strip() and (progress or not PROGRESS.match(line))]


def assert_few_lines(result, last: str, most: int = 4):
  """At most `most` shown lines on stderr, no traceback, and the last one starts with `last`."""
  lines = shown_lines(result.stderr)
  assert "Traceback" not in result.stderr and len(lines) <= most, result.stderr[-4000:]
  assert lines and lines[-1].startswith(last), lines


def largest_array_file(checkpoint):
  return max((p for p in (checkpoint / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
             key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
  """(corpus, workdir) of a 6-step run of the 4 x 128 model, checkpoints 2, 4, 6."""
  root = tmp_path_factory.mktemp("wide")
  corpus = root / "corpus.txt"
  corpus.write_text(CORPUS)
  result = launch_tiny(corpus, root / "run", *WIDE, *STEPS)
  assert result.returncode == 0, result.stderr[-3000:]
  return corpus, root / "run"


@pytest.fixture
def damaged(wide_run, tmp_path):
  """A copy of wide_run whose checkpoint 6 has its largest file cut to half (the issue's recipe)."""
  workdir = tmp_path / "run"
  shutil.copytree(wide_run[1], workdir)
  path = largest_array_file(workdir / "checkpoints" / "6")
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  return wide_run[0], workdir


def test_eval_of_a_damaged_step_is_one_line(damaged):
  corpus, workdir = damaged
  result = launch_tiny(corpus, workdir, *WIDE, *STEPS, "--mode=eval", "--step=6")
  assert result.returncode == 2
  assert_few_lines(result, "error: checkpoint", most=1)
  assert "cannot be restored" in result.stderr and "[2, 4]" in result.stderr
  assert "pybind11" not in result.stderr and "TensorStore details" not in result.stderr


def test_eval_and_training_fall_back_past_a_damaged_checkpoint_in_a_few_lines(damaged):
  corpus, workdir = damaged
  result = launch_tiny(corpus, workdir, *WIDE, *STEPS, "--mode=eval")
  assert result.returncode == 0, result.stderr[-3000:]
  assert_few_lines(result, "warning: checkpoint", most=1)
  assert "moved it to 6.damaged" in result.stderr and "pybind11" not in result.stderr
  (workdir / "checkpoints" / "6.damaged").rename(workdir / "checkpoints" / "6")  # damaged again, for training
  result = launch_tiny(corpus, workdir, *WIDE, *STEPS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_few_lines(result, "warning: checkpoint", most=1)
  assert "resuming from step 4" in result.stdout
  assert (workdir / "checkpoints" / "6").is_dir()  # retrained from 4: nothing lost


def _unshare():
  """A command prefix that runs the rest in a private mount namespace, or None where that is not allowed."""
  for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
    if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
      return prefix
  return None


def launch_on_small_disk(size_bytes: int, disk, keep, *args):
  """launch.py with `disk` a tmpfs of `size_bytes` (seen only by this command); what it leaves on the disk is
  copied to `keep` afterwards (the tmpfs goes with the command's mount namespace)."""
  prefix = _unshare()
  if prefix is None:
    pytest.skip("no mount namespace here (unshare --mount is refused): cannot make a small disk")
  disk.mkdir(exist_ok=True)
  script = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; "$4" "$5" "${@:6}"; rc=$?; cp -a "$2/." "$3"; exit $rc'
  return subprocess.run([*prefix, "bash", "-c", script, "bash", str(size_bytes), str(disk), str(keep),
                         sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def checkpoint_bytes(workdir) -> int:
  return sum(p.stat().st_size for p in (workdir / "checkpoints" / "2").rglob("*") if p.is_file())


@pytest.mark.parametrize("at", ["the first checkpoint", "a checkpoint mid-run"])
def test_a_full_disk_is_one_line_and_loses_nothing(wide_run, tmp_path, at):
  corpus, trained = wide_run
  one = checkpoint_bytes(trained)
  size = 2 << 20 if at == "the first checkpoint" else one * 5 // 2 + (1 << 20)  # room for two, not three
  disk, kept = tmp_path / "disk", tmp_path / "kept"
  args = ["--config", ROOT / "tests/tiny_config.py", "--workdir", disk / "run", f"--config.data.path={corpus}",
          *WIDE, *STEPS]
  result = launch_on_small_disk(size, disk, kept, *args)
  assert result.returncode == 2, result.stderr[-3000:]
  assert_few_lines(result, "error: the disk is full")
  assert "No space left on device" in result.stderr
  # The same command on a disk with room (here: the workdir moved to one) continues from what was committed.
  resumed = launch_tiny(corpus, kept / "run", *WIDE, *STEPS)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert ("resuming from step" in resumed.stdout) == (at == "a checkpoint mid-run"), resumed.stdout
  assert (kept / "run" / "checkpoints" / "6").is_dir()


@pytest.mark.parametrize("size_kb", [52, 56, 60])  # 52 and 60 fill under the events (tracebacks before the fix)
def test_a_disk_that_fills_while_metrics_and_events_are_written_is_one_line(tmp_path, corpus_file, size_kb):
  """A metric line every step and no checkpoint until the end: the disk fills under metrics.jsonl or the
  TensorBoard events (which one depends on the size). tensorboardX's threaded writer added two tracebacks at exit
  (its flush in an atexit hook, its worker thread) after the one-line error."""
  disk, kept = tmp_path / "disk", tmp_path / "kept"
  result = launch_on_small_disk(size_kb << 10, disk, kept, "--config", ROOT / "tests/tiny_config.py", "--workdir",
                                disk / "run", f"--config.data.path={corpus_file}", "--config.train.num_steps=400",
                                "--config.train.log_every=1", "--config.train.checkpoint_every=400",
                                "--config.train.eval_every=400")
  assert result.returncode == 2, result.stderr[-3000:]
  assert_few_lines(result, "error: the disk is full", most=1)
  assert "Exception" not in result.stderr


@pytest.mark.parametrize("num_steps", [6, 4])
def test_a_finished_run_says_so_in_one_line(wide_run, num_steps):
  """Was: "already trained", then the model line and two empty progress bars."""
  corpus, workdir = wide_run
  result = launch_tiny(corpus, workdir, *WIDE, *STEPS[1:], f"--config.train.num_steps={num_steps}")
  assert result.returncode == 0, result.stderr[-3000:]
  shown = shown_lines(result.stdout + result.stderr, progress=True)
  assert len(shown) == 2 and shown[0].startswith("jax "), shown
  assert shown[1] == (f"{workdir} is already trained to step 6 (train.num_steps={num_steps}); raise "
                      "--config.train.num_steps to continue")


def test_a_metrics_line_whose_step_is_not_a_number_is_dropped_on_resume(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  result = launch_tiny(corpus_file, workdir, "--config.train.num_steps=4", "--config.train.checkpoint_every=4")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = workdir / "metrics.jsonl"
  metrics.write_text(metrics.read_text() + '{"step": "abc"}\n{"step": null}\n{"step": true}\n{"step": 2.5}\n')
  result = launch_tiny(corpus_file, workdir, "--config.train.num_steps=8", "--config.train.checkpoint_every=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert all(isinstance(step, int) for step in steps) and steps == sorted(steps) and steps[-1] == 8


def test_rows_with_a_bad_step_are_skipped_when_read(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "a": 1}\n{"step": "abc"}\n{"step": null}\n{"a": 3}\n[1]\n{"step": 4}\n{"ste')
  assert [row["step"] for row in metrics_log.read_rows(path)] == [2, 4]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """An unconditional tiny digits run (2 steps)."""
  workdir = tmp_path_factory.mktemp("digits") / "run"
  result = launch("--config", ROOT / "tests/tiny_image_config.py", "--workdir", workdir,
                  "--config.train.num_steps=2", "--config.train.checkpoint_every=2", "--config.train.eval_every=2")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.parametrize("label", ["3", "42"])
def test_class_label_on_an_unconditional_run_is_refused(digits_run, label):
  result = launch("--config", ROOT / "tests/tiny_image_config.py", "--workdir", digits_run, "--mode=sample",
                  f"--class_label={label}")
  assert result.returncode == 2
  assert_few_lines(result, "error: --class_label", most=1)
  assert "this run is unconditional" in result.stderr


@pytest.mark.parametrize("config, override, fragment", [
    ("configs/digits.py", "--config.data.tokenizer=gpt2", "it applies to text sources"),
    ("configs/digits.py", "--config.model.transformer.positions=sinusoidal", "it applies to model.backbone='transformer'"),
    ("configs/quickstart.py", "--config.data.tokens.token_dtype=float64", "it applies to data.source='tokens'"),
    ("configs/quickstart.py", "--config.model.unet.channels=64", "it applies to model.backbone='unet'"),
    ("configs/quickstart.py", "--config.diffusion.genmd4.initial_power=2.0", "it applies to objective='genmd4'"),
    ("configs/quickstart.py", "--config.sampler.block_length=8", "it applies to sampler.name='semi_ar'"),
    ("configs/quickstart_ar.py", "--config.diffusion.schedule=cosine", "objective='ar' has no masking schedule"),
])
def test_a_key_set_where_it_has_no_effect_is_refused(tmp_path, config, override, fragment):
  result = launch("--config", ROOT / config, "--workdir", tmp_path / "run", override)
  assert result.returncode == 2
  assert_few_lines(result, "error: ", most=1)
  assert "has no effect on this run" in result.stderr and fragment in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("delay", [0.3, 2.0])
def test_ctrl_c_while_starting_is_one_line(tmp_path, corpus_file, delay):
  process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"),
                              "--workdir", str(tmp_path / "run"), f"--config.data.path={corpus_file}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(delay)  # inside the imports, or the data loading and model set-up
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr[-3000:]
  lines = shown_lines(stderr)
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
  assert lines[-1].startswith("interrupted (Ctrl-C)") and len(lines) <= 2, lines


def _restarted(pid: int, timeout: float = 60.0) -> bool:
  """Waits until process `pid` has restarted itself with the allocator's glibc tunable (its environment shows it)."""
  environ = pathlib.Path(f"/proc/{pid}/environ")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      if allocator.TUNABLE.encode() in environ.read_bytes():
        return True
    except OSError:
      return False
    time.sleep(0.0005)
  return False


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.01, 0.02, 0.04, 0.08, 0.16])
def test_ctrl_c_while_the_restarted_interpreter_starts_is_one_line(delay):
  """The allocator restarts launch.py (execve): a Ctrl-C in the new interpreter's own start-up was "Fatal Python
  error: init_import_site", and in its first imports a KeyboardInterrupt traceback."""
  if not allocator.wanted():
    pytest.skip("no restart here (not Linux with glibc)")
  process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs/quickstart.py"),
                              "--mode=params"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert _restarted(process.pid), "launch.py did not restart with the tunable"
  time.sleep(delay)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr[-3000:]
  assert process.returncode == 130, (process.returncode, stderr[-3000:])
  assert shown_lines(stderr) == [shown_lines(stderr)[0]] and stderr.strip().startswith("interrupted (Ctrl-C)")


@pytest.mark.parametrize("args, fragment", [
    (("--num_samples", str(10**12)), "1,000,000,000,000 samples of 16 tokens need at least 332.0 TB"),
    (("--prompt=",), "--prompt is empty, so it conditions nothing"),
    (("--length", str(10**12), "--config.objective=bd3", "--config.sampler.kv_cache=exact"),
     "--length=1000000000000 is past the largest position a sample can have"),
])
def test_sampling_what_cannot_be_drawn_or_written_is_one_line(wide_run, args, fragment):
  """Was: a 47-line RESOURCE_EXHAUSTED traceback (10^7 samples), numpy's MemoryError (10^9), an unconditional run
  without a word (--prompt ""), 19.6 GB of memory in 80 s (BD3, --length 10^9)."""
  corpus, workdir = wide_run
  before = sorted(path.name for path in (workdir / "samples").iterdir())
  result = launch_tiny(corpus, workdir, *WIDE, *STEPS, "--mode=sample", *args)
  assert result.returncode == 2
  assert_few_lines(result, "error: ", most=1)
  assert fragment in result.stderr
  assert sorted(path.name for path in (workdir / "samples").iterdir()) == before


def test_unknown_key_on_the_command_line_lists_its_group(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path, "--config.model.widht=64")
  assert_few_lines(result, "error: bad command line: unknown config key 'model.widht'", most=1)
  assert "the keys of 'model' are: " in result.stderr and "model.transformer.*" in result.stderr
  result = launch_tiny(corpus_file, tmp_path, "--sampler.stepz=3")  # the shorthand form
  assert "unknown config key 'sampler.stepz'; the keys of 'sampler' are: " in result.stderr


def test_a_type_error_on_the_command_line_keeps_its_quotes(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path, "--config.train.num_steps=abc")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "'abc'" in result.stderr


def test_warmup_longer_than_training_is_said_and_the_bar_names_compile_and_eval(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--config.train.warmup_steps=20",
                       "--config.train.num_steps=4", "--config.train.eval_every=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "warning: train.warmup_steps=20 is not below train.num_steps=4: the warm-up is cut to 3 steps" in \
      result.stderr
  frames = re.split(r"[\r\n]", result.stderr)
  assert any(frame.startswith("compiling:") for frame in frames)
  assert any(frame.startswith("evaluating:") for frame in frames)
  assert shown_lines(result.stderr, progress=True)[-1].startswith("train: 100%")


def test_progress_rate_leaves_out_the_compile_and_evaluations_and_elapsed_never_runs_back(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
  bar = metrics_log.ProgressBar(0, 100)
  bar.bar._time = lambda: clock[0]  # tqdm's own clock, the same fake time
  bar.bar.start_t = bar.bar.last_print_t = clock[0]
  clock[0] += 12.0  # compiling
  bar.resume()
  clock[0] += 2.0  # ten steps
  bar.step(10, 1.0, 1.5)
  bar.pause("evaluating")
  clock[0] += 8.0
  bar.resume()
  clock[0] += 2.0
  bar.step(10, 1.0, 1.5)
  shown = bar.bar.format_dict
  assert math.isclose(shown["elapsed"], 24.0)  # the wall time, evaluations and the compile included
  assert math.isclose(shown["rate"], 5.0)  # 20 steps in the 4 s spent stepping
  assert "00:24<00:16" in bar.bar.format_meter(**shown)  # elapsed < remaining: 80 steps at 5 steps/s
  bar.close()


def test_eval_prints_the_t_step_bounds(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  assert launch_tiny(corpus_file, workdir, "--config.train.num_steps=2").returncode == 0
  result = launch_tiny(corpus_file, workdir, "--config.train.num_steps=2", "--mode=eval",
                       "--config.eval.bound_steps=4,16")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "The bound with T sampling steps" in result.stdout
  for steps in ("| 4 |", "| 16 |", "| continuous |"):
    assert steps in result.stdout


def test_documented_parameter_counts_are_what_params_mode_says():
  """README's and docs/images.md's parameter counts for each config equal `--mode params` (shapes only)."""
  import importlib

  from md4_jax.run import config_check, modes
  from tests.conftest import reference

  documented = {}
  for page in ("README.md", "docs/images.md"):
    header = []
    for line in (ROOT / page).read_text().splitlines():
      cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
      if not cells or set(cells[0]) <= set("-"):
        header = header if cells else []
        continue
      if not cells[0].startswith("`"):
        header = cells
        continue
      in_text = re.search(r"([\d,]+) parameters\)", line)
      count = (cells[header.index("parameters")] if "parameters" in header else in_text and in_text.group(1))
      for name in re.findall(r"`(?:configs/)?(\w+?)(?:\.py)?`", cells[0]):
        if count:
          documented.setdefault(name, set()).add(int(count.replace(",", "")))
  assert {"quickstart", "digits", "cifar10", "owt_small"} <= set(documented)
  for name, counts in documented.items():
    config = importlib.import_module(f"configs.{name}").get_config()
    assert counts == {modes._describe(config_check.validate(config, reference(), "params"))["params"]}, name
