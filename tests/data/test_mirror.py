"""Data in a gs:// bucket (data.dir, data.path) and sweeps into one, against the local GCS emulator.

A dataset prepared into a bucket trains like the same dataset prepared locally; a second reader downloads
nothing, a changed object is downloaded again and one gone from the bucket leaves the mirror; a data.path object
trains like the local file and a run's moved data is recognised by its content across bucket and disk.
"""

import functools
import json

import fsspec
import pytest

from md4_jax.data import mirror, text8
from md4_jax.errors import UserError
from md4_jax.run import modes
from tests import cloud_emulator
from tests.cloud_emulator import gcs  # noqa: F401 (the emulator fixture)
from tests.conftest import CORPUS, launch, make_config, reference
from tests.data.test_text8 import make_text, make_zip
from tests.test_end_to_end import metric_rows

BUCKET = f"gs://{cloud_emulator.BUCKET}"
SIZES = (4000, 400, 400)


def text8_config(data_dir, manual_dir="", **overrides):
  return make_config("", data__source="text8", data__dir=str(data_dir), data__manual_dir=str(manual_dir),
                     data__eval_fraction=0.05,  # the default: text8 has its own held-out split
                     train__num_steps=4, train__eval_every=4, train__checkpoint_every=4, **overrides)


def generations(gcs_emulator, prefix):
  """{object name: generation}, straight from the server."""
  filesystem, _ = fsspec.core.url_to_fs(BUCKET)
  return {name: filesystem.info(f"{cloud_emulator.BUCKET}/{name}")["generation"]
          for name in gcs_emulator.objects(prefix=prefix)}


@pytest.fixture(scope="module")
def prepared(gcs, tmp_path_factory):
  """text8 (a fixture zip) prepared into gs://test-bucket/data through --mode prepare, and locally."""
  root = tmp_path_factory.mktemp("bucket_data")
  manual = make_zip(root / "manual", make_text(sum(SIZES)))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(text8, "prepare", functools.partial(text8.prepare, split_sizes=SIZES))
    patch.setenv(mirror.CACHE_VARIABLE, str(root / "preparing_cache"))
    modes.main(text8_config(f"{BUCKET}/data", manual), None, "prepare", reference=reference())
    modes.main(text8_config(root / "local_data", manual), None, "prepare", reference=reference())
  return root


def test_prepare_uploads_the_dataset_but_not_its_downloads(gcs, prepared):
  names = sorted(gcs.objects(prefix="data/"))
  assert names == ["data/text8/meta.json", "data/text8/test.npy", "data/text8/train.npy", "data/text8/validation.npy"]
  assert (prepared / "preparing_cache" / "gs" / cloud_emulator.BUCKET / "data" / "text8" / "train.npy").is_file()


def test_preparing_again_from_another_machine_keeps_the_bucket_copy(gcs, prepared, monkeypatch, tmp_path):
  before = generations(gcs, "data/")
  monkeypatch.setattr(text8, "prepare", functools.partial(text8.prepare, split_sizes=SIZES))
  monkeypatch.setenv(mirror.CACHE_VARIABLE, str(tmp_path / "empty_cache"))
  # No manual_dir: a prepare that had to redo the work would fail for want of text8.zip.
  modes.main(text8_config(f"{BUCKET}/data"), None, "prepare", reference=reference())
  assert generations(gcs, "data/") == before


@pytest.mark.slow
def test_a_bucket_dataset_trains_like_the_local_copy(gcs, prepared, monkeypatch):
  monkeypatch.setenv(mirror.CACHE_VARIABLE, str(prepared / "training_cache"))
  modes.main(text8_config(f"{BUCKET}/data"), prepared / "bucket_data_run", "train", reference=reference())
  modes.main(text8_config(prepared / "local_data"), prepared / "local_data_run", "train", reference=reference())
  assert metric_rows(prepared / "bucket_data_run") == metric_rows(prepared / "local_data_run")


def test_the_mirror_downloads_only_what_changed(gcs, prepared, monkeypatch, tmp_path):
  monkeypatch.setenv(mirror.CACHE_VARIABLE, str(tmp_path / "cache"))
  data_dir = f"{BUCKET}/mirrored"
  filesystem, _ = fsspec.core.url_to_fs(BUCKET)
  for name in ("a.npy", "b.npy", "meta.json"):
    filesystem.pipe(f"{cloud_emulator.BUCKET}/mirrored/set/{name}", name.encode())
  directory = mirror.local(data_dir) / "set"
  mirror.pull(data_dir, directory, required=True)
  inodes = {path.name: path.stat().st_ino for path in directory.iterdir()}
  mirror.pull(data_dir, directory, required=True)
  assert {path.name: path.stat().st_ino for path in directory.iterdir()} == inodes  # nothing downloaded
  filesystem.pipe(f"{cloud_emulator.BUCKET}/mirrored/set/a.npy", b"changed")
  filesystem.rm(f"{cloud_emulator.BUCKET}/mirrored/set/b.npy")
  mirror.pull(data_dir, directory, required=True)
  assert (directory / "a.npy").read_bytes() == b"changed" and not (directory / "b.npy").exists()
  assert (directory / "meta.json").stat().st_ino == inodes["meta.json"]
  with pytest.raises(UserError, match=f"{data_dir}/other holds no prepared data: run .*--mode prepare "
                                      f"--config.data.dir={data_dir}"):
    mirror.pull(data_dir, mirror.local(data_dir) / "other", required=True)


def test_a_data_path_object_trains_like_the_local_file_and_is_recognised_by_content(gcs, monkeypatch, tmp_path):
  monkeypatch.setenv(mirror.CACHE_VARIABLE, str(tmp_path / "cache"))
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(CORPUS)
  filesystem, _ = fsspec.core.url_to_fs(BUCKET)
  filesystem.put_file(str(corpus), f"{cloud_emulator.BUCKET}/corpus.txt")
  filesystem.pipe(f"{cloud_emulator.BUCKET}/other.txt", (CORPUS + " more").encode())
  steps = dict(train__num_steps=4, train__eval_every=4, train__checkpoint_every=4)
  modes.main(make_config(f"{BUCKET}/corpus.txt", **steps), tmp_path / "bucket_file_run", "train", reference=reference())
  modes.main(make_config(corpus, **steps), tmp_path / "local_file_run", "train", reference=reference())
  assert metric_rows(tmp_path / "bucket_file_run") == metric_rows(tmp_path / "local_file_run")
  # The run's data moved: the local copy (same SHA-256) evaluates it; another object is refused.
  modes.main(make_config(corpus, **steps), tmp_path / "bucket_file_run", "eval", reference=reference())
  with pytest.raises(UserError, match="is not the file this run was trained on"):
    modes.main(make_config(f"{BUCKET}/other.txt", **steps), tmp_path / "local_file_run", "eval", reference=reference())


def test_missing_data_in_a_bucket_is_one_line(gcs, monkeypatch, tmp_path):
  monkeypatch.setenv(mirror.CACHE_VARIABLE, str(tmp_path / "cache"))
  cases = [(make_config(f"{BUCKET}/absent.txt"), "data.path='gs://test-bucket/absent.txt' is not an object in the "
                                                 "bucket; upload it"),
           (text8_config(f"{BUCKET}/unprepared"), "gs://test-bucket/unprepared/text8 holds no prepared data"),
           (text8_config("gs://no-such-bucket/data"), "bucket gs://no-such-bucket does not exist")]
  for config, message in cases:
    with pytest.raises(UserError, match=message) as error:
      modes.main(config, tmp_path / "run", "train", reference=reference())
    assert "\n" not in str(error.value)
  with pytest.raises(UserError, match="data.manual_dir='gs://test-bucket/raw': the release files must be in a local"):
    modes.main(text8_config(f"{BUCKET}/data", f"{BUCKET}/raw"), None, "prepare", reference=reference())


@pytest.mark.slow
def test_a_sweep_runs_into_a_bucket(gcs, tmp_path):
  from tests.run.test_sweeps import NAMES, write_sweep  # noqa: PLC0415

  corpus = tmp_path / "corpus.txt"
  corpus.write_text(CORPUS)
  result = launch("--config", write_sweep(tmp_path), f"--config.data.path={corpus}", "--workdir",
                  f"{BUCKET}/sweep", "--sweep_index", "1")
  assert result.returncode == 0, result.stderr[-3000:]
  names = gcs.objects(prefix="sweep/")
  assert f"sweep/{NAMES[1]}/checkpoints/2/commit_success.txt" in names
  assert not any(name.startswith(f"sweep/{NAMES[0]}/") for name in names)
  saved = json.loads(fsspec.open(f"{BUCKET}/sweep/{NAMES[1]}/config.json").open().read())
  assert saved["train"]["learning_rate"] == 0.002
