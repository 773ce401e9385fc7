"""Weights & Biases logging (engine/wandb_log.py) in W&B's offline mode: what metrics.jsonl holds, the config and
the samples, one W&B run per workdir across a resume; and its config errors."""

import builtins
import json
import struct

import numpy as np
import pytest

from md4_jax.engine import wandb_log
from md4_jax.errors import UserError
from md4_jax.run import modes
from tests.conftest import make_config, reference

wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")  # the test extra installs wandb


def read_records(path) -> list:
  """The records of a .wandb file: W&B's log format (a 7-byte header, then 32 KiB blocks of records, each a
  4-byte checksum, a 2-byte length, a 1-byte type (1 whole, 2 first, 3 middle, 4 last part) and its bytes)."""
  data, block, records, parts = path.read_bytes(), 32768, [], b""
  assert data[:4] == b":W&B"
  offset = 7
  while offset + 7 <= len(data):
    if block - offset % block < 7:  # a block's tail too short for a header is padding
      offset += block - offset % block
      continue
    length, kind = struct.unpack("<HB", data[offset + 4:offset + 7])
    if kind == 0:
      offset += block - offset % block
      continue
    parts += data[offset + 7:offset + 7 + length]
    offset += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(parts)
      records.append(record)
      parts = b""
  return records


def history(run_directory) -> list[dict]:
  (log,) = run_directory.glob("run-*.wandb")
  rows = []
  for record in read_records(log):
    if record.WhichOneof("record_type") == "history":
      rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
  return rows


def config_of(run_directory) -> dict:
  (log,) = run_directory.glob("run-*.wandb")
  updates = {}
  for record in read_records(log):
    if record.WhichOneof("record_type") == "config":
      updates.update({item.key: json.loads(item.value_json) for item in record.config.update})
  return updates


@pytest.mark.slow
def test_offline_wandb_gets_the_metrics_config_and_samples_and_a_resume_continues_the_run(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  config = make_config(corpus_file, train__num_steps=8, train__eval_every=4, wandb__project="md4-tests",
                       wandb__mode="offline")
  modes.main(config, workdir, "train", reference=reference())
  run_id = json.loads((workdir / "config.json").read_text())["_run"]["wandb_id"]
  (first,) = (workdir / "wandb").glob(f"offline-run-*-{run_id}")
  logged = [row for row in history(first) if any(key.startswith(("train/", "eval/")) for key in row)]
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in logged] == [line["step"] for line in lines]
  for row, line in zip(logged, lines):
    assert {key: value for key, value in row.items() if key.startswith(("train/", "eval/"))} == pytest.approx(
        {key: value for key, value in line.items() if key != "step"}, rel=1e-6)
  assert config_of(first)["train"]["num_steps"] == 8
  samples = [row for row in history(first) if "samples/text/_type" in row]  # nested keys, joined by "/"
  assert [row["step"] for row in samples] == [4, 8] and samples[0]["samples/text/_type"] == "table-file"
  assert list((first / "files" / "media" / "table" / "samples").glob("text_*.table.json"))
  # Resumed: a new offline directory of the same W&B run, which goes on from the checkpoint.
  config.train.num_steps = 12
  modes.main(config, workdir, "train", reference=reference())
  assert json.loads((workdir / "config.json").read_text())["_run"]["wandb_id"] == run_id
  (second,) = set((workdir / "wandb").glob(f"offline-run-*-{run_id}")) - {first}
  steps = [row["step"] for row in history(second) if "train/loss" in row]
  assert steps == [10, 12] and config_of(second)["train"]["num_steps"] == 12


def test_image_samples_go_to_wandb_as_images(tmp_path):
  """An image run's evaluation: its grid and reverse-process PNGs become W&B images (offline files)."""
  from md4_jax.storage import files  # noqa: PLC0415

  paths = [tmp_path / "samples" / "step_4.png", tmp_path / "samples" / "step_4_process.png"]
  paths[0].parent.mkdir()
  for path in paths:
    files.write_png_atomically(path, np.full((8, 8, 3), 200, np.uint8))
  (tmp_path / "samples" / "step_4.jsonl").write_text('{"index": 0, "tokens": [1, 2]}\n')
  config = make_config("unused.txt", wandb__project="md4-tests", wandb__mode="offline")
  run = wandb_log.WandbRun(config, tmp_path, "img00001")
  run.samples(4, [*paths, tmp_path / "samples" / "step_4.jsonl"])
  run.close()
  (directory,) = (tmp_path / "wandb").glob("offline-run-*-img00001")
  (row,) = [row for row in history(directory) if "samples/grid/_type" in row]
  assert row["step"] == 4 and row["samples/grid/_type"] == "image-file" and row["samples/process/_type"] == "image-file"
  assert "samples/text/_type" not in row  # an image run's .jsonl holds tokens, not texts
  assert len(list((directory / "files" / "media" / "images" / "samples").glob("*.png"))) == 2


def test_wandb_keys_are_checked_before_any_work(tmp_path, corpus_file, monkeypatch):
  with pytest.raises(UserError, match="wandb.mode='cloud'; choose one of \\('online', 'offline'\\)"):
    modes.main(make_config(corpus_file, wandb__project="p", wandb__mode="cloud"), tmp_path / "run",
               reference=reference())
  with pytest.raises(UserError, match="wandb.entity='me' has no effect on this run: it applies to wandb.project"):
    modes.main(make_config(corpus_file, wandb__entity="me"), tmp_path / "run", reference=reference())
  real_import = builtins.__import__
  monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: (
      (_ for _ in ()).throw(ImportError("no wandb")) if name == "wandb" else real_import(name, *args, **kwargs)))
  with pytest.raises(UserError, match=r"not installed: pip install -e \".\[wandb\]\""):
    wandb_log.check(make_config(corpus_file, wandb__project="p").wandb)
  assert not (tmp_path / "run").exists()
