"""The run directory before any work: usable, trained by one process at a time, and holding a compatible run.

config.json (CONTRACT) is the resolved config plus one key that is not config, "_run" (RUN_RECORD):
{"data_sha256": the SHA-256 of data.path's file when the run started (so eval can accept the same file
at a new place), "recovery": [{"from_step": N, "changes": {key: [old, new]}}, ...] (the recovery keys a
resumed run changed, oldest first)}. `config_check.migrate` drops it, so every reader sees the config.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import pathlib
import socket
import sys
import tempfile

import jax
from etils import epath

from md4_jax.data import mirror
from md4_jax.errors import UserError
from md4_jax.run import config_check
from md4_jax.storage import files
from md4_jax.storage import paths as storage

# What a diverged run may change when it resumes (the NaN message suggests them): they change how the
# remaining steps update the parameters, not what the checkpoint's arrays mean.
RECOVERY_KEYS = ("train.learning_rate", "train.grad_clip", "train.warmup_steps")


def check_usable(workdir: epath.Path, mode: str) -> None:
  """--workdir is a directory this process can write (train creates it), before any work."""
  storage.check_bucket(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file, not a directory; pass a directory (train creates it)")
  if mode == "train":
    try:
      workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise UserError(f"--workdir {workdir} cannot be created ({error.strerror}); pass a directory you can "
                      "write") from None
  if not workdir.is_dir() and not storage.is_remote(workdir):  # a bucket prefix exists once an object is in it
    return  # eval / sample: check_config says there is no run
  try:
    _probe_write(workdir)
  except OSError as error:  # a read-only mount passes os.access; only a write tells
    raise UserError(f"--workdir {workdir} cannot be written ({error.strerror}); --mode {mode} writes its results "
                    "there: make it writable, or copy the run to a writable directory and pass that") from None


def _probe_write(workdir: epath.Path) -> None:
  if not storage.is_remote(workdir):
    with tempfile.TemporaryFile(dir=workdir):
      pass
    return
  # A bucket: write and delete a probe object (the check_bucket request proved reading, not writing).
  probe = workdir / f".write_probe.{socket.gethostname()}.{os.getpid()}"
  probe.write_text("md4_jax write probe\n")
  probe.unlink()


@contextlib.contextmanager
def training_lock(workdir: epath.Path):
  """Holds WORKDIR/train.lock (train.lock.I for process I > 0) while training: a second trainer of the
  same workdir is refused. An flock, so a killed process leaves nothing stuck (the kernel drops it).

  A bucket has no flock, and an object "lease" would outlive a killed process (the next start could not
  tell a stale lease from a live one): a bucket workdir is not locked, with a warning, and two trainers
  of one gs:// path are the user's to avoid (a pod's workers are one trainer).
  """
  index = jax.process_index()
  if storage.is_remote(workdir):
    if index == 0:
      print(f"warning: {workdir} is a bucket, which has no file locks: nothing stops a second trainer of this "
            "workdir; make sure only this job trains it", flush=True)
    yield
    return
  path = workdir / ("train.lock" if index == 0 else f"train.lock.{index}")
  with open(path, "a+", encoding="utf-8") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "a process that has not written its name yet"
      raise UserError(f"{workdir} is being trained by another process ({holder}); two trainers would write the "
                      "same checkpoints. Let it finish or stop it, then run this command again, or use another "
                      "--workdir") from None
    handle.seek(0)
    handle.truncate()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}\n")
    handle.flush()
    yield


def committed_steps(directory: epath.Path) -> list[int]:
  """Steps with a checkpoint directory (Orbax names them by step once committed; damaged ones included).

  In a bucket Orbax writes into N/ directly and commits with N/commit_success.txt (there is no rename), so a
  save cut short leaves an N/ without it, which is not a checkpoint.
  """
  if not directory.is_dir():
    return []
  remote = storage.is_remote(directory)
  return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit() and entry.is_dir()
                and (not remote or (entry / "commit_success.txt").exists()))


def check_config(config, workdir: epath.Path, mode: str, reference=None) -> dict:
  """Checks the run in `workdir` against `config` and returns the run record to save with it (train).

  A training start replaces a config.json that no checkpoint was saved under (a start that failed
  early). Resuming may change RECOVERY_KEYS (announced, and recorded); a new data.path is accepted when
  its file has the recorded SHA-256 (not checked by sample, which reads no data).
  """
  path, training = workdir / "config.json", mode == "train"
  steps = committed_steps(workdir / "checkpoints")
  if not path.exists():
    if not training:
      raise UserError(f"{workdir} holds no run (no config.json); train into it first or pass the run's --workdir")
    if steps:
      raise UserError(f"{workdir} has checkpoints but no config.json, so its config is unknown; use a new --workdir")
    return _new_record(config)
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise UserError(f"{path} is not valid JSON ({error}); restore it or use a new --workdir") from error
  if training and not steps:
    return _new_record(config)  # nothing was saved under the old config: it binds nothing
  record = json.loads(json.dumps(saved.get(config_check.RUN_RECORD, {})))
  config_check.check_resumable(saved, config, workdir, reference, allowed=RECOVERY_KEYS + ("data.path",))
  changed = config_check.differences(saved, config, reference)
  if "data.path" in changed and mode != "sample":
    _check_same_data(record, *changed["data.path"])
  recovery = {key: list(changed[key]) for key in RECOVERY_KEYS if key in changed}
  if training and recovery:
    record.setdefault("recovery", []).append({"from_step": steps[-1], "changes": recovery})
    if jax.process_index() == 0:
      print("this run now differs from its original config: " + "; ".join(
          f"{key} {old!r} -> {new!r}" for key, (old, new) in recovery.items()) +
          f", from the checkpoint at step {steps[-1]} on (config.json keeps the history)")
  return record


def save_config(config, workdir: epath.Path, record: dict) -> None:
  """config.json: the config and the run record (process 0; atomic, others may be reading it)."""
  if jax.process_index() == 0:
    values = {**config.to_dict(), config_check.RUN_RECORD: record}
    files.write_text_atomically(workdir / "config.json", json.dumps(values, indent=2, sort_keys=True))


def _new_record(config) -> dict:
  file = pathlib.Path(mirror.local_file(config.data.path)).expanduser() if config.data.path else None
  return {"data_sha256": file_sha256(file)} if file and file.is_file() else {}


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def _check_same_data(record: dict, old_path: str, new_path: str) -> None:
  """A moved data file is accepted when its content is the one the run was trained on."""
  new_file = pathlib.Path(mirror.local_file(new_path) if new_path else "").expanduser()
  if not new_path or not new_file.is_file():
    raise UserError(f"data.path={new_path!r} is not a file; this run was trained on data.path={old_path!r}: pass "
                    "that file, or a copy of it (its SHA-256 is checked)")
  expected = record.get("data_sha256")
  if expected is None:
    raise UserError(f"data.path={new_path!r} differs from the run's data.path={old_path!r}, and the run recorded no "
                    "checksum of its file to compare (it predates them): pass the original path")
  actual = file_sha256(new_file)
  if actual != expected:
    raise UserError(f"data.path={new_path!r} is not the file this run was trained on ({old_path!r}): its SHA-256 "
                    f"{actual[:16]}... differs from the recorded {expected[:16]}...; pass the run's own data file")
