"""Workdirs in a gs:// bucket, against a local GCS emulator (fake-gcs-server, started here; no network).

A bucket run trains, is killed and resumes to the metrics and arrays of a local run; eval and sample restore
from the bucket; checkpoints move between a bucket and a local directory both ways; a missing bucket, a
server that is down and a store error mid-save fail clearly without losing a checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest
from etils import epath

from md4_jax.engine import checkpoints
from md4_jax.run import modes
from tests import cloud_emulator
from tests.cloud_emulator import gcs  # noqa: F401 (the emulator fixture)
from tests.conftest import ROOT, copy_of_run, launch, make_config, reference
from tests.test_end_to_end import assert_same_arrays, metric_rows, saved_state

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

BUCKET_RUN = f"gs://{cloud_emulator.BUCKET}/run"


@pytest.fixture(scope="module")
def local_run(tiny_run, tmp_path_factory):
  """(corpus, workdir, result): the tiny config trained uninterrupted in a local directory."""
  return copy_of_run(tiny_run, tmp_path_factory.mktemp("local") / "run")


def tiny_command(corpus, workdir, *args):
  return [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"), "--workdir",
          str(workdir), f"--config.data.path={corpus}", *args]


def copy_tree(source: epath.Path, target: epath.Path) -> None:
  """Every file under source to the same place under target (a bucket has no directory objects to copy)."""
  target.mkdir(parents=True, exist_ok=True)
  for entry in source.iterdir():  # epath's rglob refuses buckets, and its walk drops their gs:// prefix
    if entry.is_dir():
      copy_tree(entry, target / entry.name)
    else:
      (target / entry.name).write_bytes(entry.read_bytes())


def eval_bpt(workdir, step=12) -> float:
  return json.loads((epath.Path(workdir) / "eval" / f"step_{step}.json").read_text())["eval/bpt"]


@pytest.fixture(scope="module")
def bucket_run(gcs, local_run):
  """The tiny run trained into gs://test-bucket/run, SIGKILLed once checkpoint 4 is committed, resumed."""
  corpus = local_run[0]
  process = subprocess.Popen(tiny_command(corpus, BUCKET_RUN), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while ("run/checkpoints/4/commit_success.txt" not in gcs.objects(prefix="run/checkpoints/4/")
         and process.poll() is None and time.time() < deadline):
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert "run/checkpoints/12/commit_success.txt" not in gcs.objects(prefix="run/checkpoints/")  # cut short
  resumed = launch(*tiny_command(corpus, BUCKET_RUN)[2:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stdout and "no file locks" in resumed.stdout
  return epath.Path(BUCKET_RUN)


def test_a_killed_bucket_run_resumes_to_the_local_runs_metrics_and_arrays(bucket_run, local_run):
  assert metric_rows(bucket_run) == metric_rows(local_run[1])
  assert_same_arrays(saved_state(bucket_run, 12), saved_state(local_run[1], 12))
  for name in ("config.json", "modality.json", "tokenizer.json", "samples/step_12.txt", "samples/step_12.jsonl"):
    assert (bucket_run / name).is_file(), name
  assert list((bucket_run / "tensorboard").glob("events.out.tfevents.*"))  # uploaded from the local staging


def test_eval_and_sample_restore_from_the_bucket(bucket_run, local_run):
  corpus, _, trained = local_run
  evaluated = launch(*tiny_command(corpus, BUCKET_RUN, "--mode", "eval")[2:])
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert eval_bpt(bucket_run) == trained["eval/bpt"]
  assert (bucket_run / "eval" / "report.md").is_file() and (bucket_run / "eval" / "curves.png").is_file()
  assert "eval/bpt" in metric_rows(bucket_run)[-1]  # the eval's line, appended by rewriting the object
  sampled = launch(*tiny_command(corpus, BUCKET_RUN, "--mode", "sample", "--num_samples", "3")[2:])
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert (bucket_run / "samples" / "step_12_ancestral.txt").read_text().count("=== sample") == 3


def test_checkpoints_move_between_a_bucket_and_a_local_directory(bucket_run, local_run, tmp_path):
  corpus, local, trained = local_run
  config = make_config(corpus)
  copy_tree(bucket_run, epath.Path(tmp_path / "from_bucket"))
  from_bucket = modes.main(config, tmp_path / "from_bucket", "eval", reference=reference())
  assert from_bucket["eval/bpt"] == trained["eval/bpt"]
  to_bucket = f"gs://{cloud_emulator.BUCKET}/from_local"
  copy_tree(epath.Path(local), epath.Path(to_bucket))
  assert modes.main(config, to_bucket, "eval", reference=reference())["eval/bpt"] == trained["eval/bpt"]


def one_line_error(result) -> str:
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


def test_a_missing_bucket_is_one_line_naming_it(gcs, local_run):
  error = one_line_error(launch(*tiny_command(local_run[0], "gs://no-such-bucket/run")[2:]))
  assert "gs://no-such-bucket does not exist" in error and "create it" in error
  assert not any(name.startswith("no-such-bucket") for name in gcs.objects(prefix=""))


def test_a_server_that_is_down_fails_within_seconds(gcs, local_run, monkeypatch):
  dead = f"http://localhost:{cloud_emulator.free_port()}"  # nothing listens there
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", dead)
  started = time.monotonic()
  error = one_line_error(launch(*tiny_command(local_run[0], BUCKET_RUN)[2:], timeout=120))
  assert time.monotonic() - started < 60
  assert f"bucket gs://{cloud_emulator.BUCKET}" in error and "did not answer" in error


def test_an_outage_during_a_run_is_one_line_and_the_same_command_resumes_once_the_store_is_back(
    local_run, tmp_path, monkeypatch):
  """The store goes away once checkpoint 4 is committed: the run stops in well under a minute with one line
  naming the bucket (no traceback, no wait for Orbax's save threads); a server back with the same objects lets
  the same command resume and end with the local run's metrics."""
  store = tmp_path / "store"
  emulator = cloud_emulator.Emulator(root=store)
  for name, value in emulator.environment.items():
    monkeypatch.setenv(name, value)
  workdir, prefix = f"gs://{cloud_emulator.BUCKET}/outage", "outage/checkpoints/4/"
  command = tiny_command(local_run[0], workdir)
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while f"{prefix}commit_success.txt" not in emulator.objects(prefix=prefix) and time.time() < deadline:
    assert process.poll() is None, process.stderr.read()[-3000:]
    time.sleep(0.05)
  emulator.stop()
  started = time.monotonic()
  _, stderr = process.communicate(timeout=240)
  assert time.monotonic() - started < 150  # gcsfs: 6 tries over ~33 s per request in flight, then a 10 s probe
  assert process.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith(
      f"error: gs://{cloud_emulator.BUCKET} stopped answering during the run (")
  emulator = cloud_emulator.Emulator(root=store, port=emulator.port)  # the same objects, at the same address
  try:
    resumed = launch(*command[2:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stdout
    assert metric_rows(epath.Path(workdir)) == metric_rows(local_run[1])
  finally:
    emulator.stop()


def test_a_store_error_mid_save_keeps_the_previous_checkpoint(gcs, monkeypatch):
  directory = f"gs://{cloud_emulator.BUCKET}/midsave/checkpoints"
  checkpointer = checkpoints.Checkpointer(directory, training=True)
  checkpointer.save(1, {"w": jnp.arange(4.0)}, {"step": 1})
  checkpointer.wait()
  write_text = epath.Path.write_text

  def failing_write_text(self, *args, **kwargs):  # the object store refuses checkpoint 2's JSON item
    if "/checkpoints/2/" in os.fspath(self):
      raise OSError("503 Service Unavailable (injected)")
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(epath.Path, "write_text", failing_write_text)
  checkpointer.save(2, {"w": jnp.arange(4.0) * 2}, {"step": 2})
  with pytest.raises(OSError, match="injected"):
    checkpointer.wait()
  monkeypatch.setattr(epath.Path, "write_text", write_text)
  assert "midsave/checkpoints/2/commit_success.txt" not in gcs.objects(prefix="midsave/")  # never committed
  state, loop_state = checkpoints.Checkpointer(directory, training=True).restore(None, {"w": jnp.zeros(4)})
  assert loop_state == {"step": 1} and state["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_two_processes_train_one_bucket_path_and_one_machine_restores_it(gcs, local_run, tmp_path):
  """A pod's workers (2 local processes x 4 devices) share gs://test-bucket/pod; both restore it on resume;
  one process on one device evaluates it afterwards. Compared with one local process on one device that
  stops and resumes at the same step (the learning-rate schedule follows num_steps)."""
  from tests.run.test_distributed import assert_close, run_one, run_two_processes  # noqa: PLC0415

  corpus, local = local_run[0], tmp_path / "one_device"
  pod = epath.Path(f"gs://{cloud_emulator.BUCKET}/pod")
  for leg in (["--config.train.num_steps=8"], []):
    run_one(corpus, local, *leg)
    outputs = run_two_processes(corpus, pod, *leg)
  assert "resuming from step 8" in outputs[0]  # both restored checkpoint 8 from the bucket (both exited 0)
  rows, reference = metric_rows(pod), metric_rows(local)

  def losses(rows):
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}

  assert_close(losses(rows), losses(reference))
  run_one(corpus, pod, "--mode", "eval")
  reference_bpt = next(row["eval/bpt"] for row in reversed(reference) if "eval/bpt" in row)
  assert abs(eval_bpt(pod) - reference_bpt) <= 1e-5 * reference_bpt


def test_s3_is_refused_in_one_line_saying_why():
  import ml_collections  # noqa: PLC0415

  from md4_jax.data import data_dir  # noqa: PLC0415
  from md4_jax.errors import UserError  # noqa: PLC0415
  from md4_jax.storage import paths as storage  # noqa: PLC0415

  with pytest.raises(UserError, match="not s3://: Orbax 0.12.8"):
    storage.path("s3://bucket/run")
  with pytest.raises(UserError, match="not s3://: Orbax 0.12.8"):
    data_dir(ml_collections.ConfigDict({"dir": "s3://bucket/data"}))
  assert os.fspath(storage.path("~/run")) == os.path.expanduser("~/run")  # local paths as before


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_one_line_naming_the_bucket_and_what_to_set(monkeypatch, status):
  """A server that refuses every request as GCS does a caller without valid credentials."""
  import http.server  # noqa: PLC0415
  import threading  # noqa: PLC0415

  from md4_jax.errors import UserError  # noqa: PLC0415
  from md4_jax.storage import paths as storage  # noqa: PLC0415

  class Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server name)
      body = json.dumps({"error": {"code": status, "message": "Anonymous caller does not have access"}}).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
  try:
    started = time.monotonic()
    with pytest.raises(UserError) as refused:
      storage.check_bucket("gs://private-bucket/run")
    assert time.monotonic() - started < 30
  finally:
    server.shutdown()
  message = str(refused.value)
  assert "\n" not in message and "gs://private-bucket" in message and f"HTTP {status}" in message
  assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "gcloud auth application-default login" in message


def test_a_checkpoints_metric_window_is_a_copy():
  """Found on the bucket: the JSON item is serialised after the loop's next add(); a shared dict was then
  saved with the following steps' sums (a resumed run's first log line counted them twice)."""
  from md4_jax.run.loop import MetricWindow  # noqa: PLC0415

  window = MetricWindow()
  saved = window.to_json()
  window.add({"loss": 1.0})
  assert saved == {"sums": {}, "count": 0}
