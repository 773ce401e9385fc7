"""CIFAR-10 and ImageNet 64x64 as rows of pixel tokens in array_record, read with tfds.

An HxWxC uint8 image becomes one row of H*W*C tokens (256 levels), channel-interleaved per pixel:
token (h*W + w)*C + c is channel c of pixel (h, w). Rows keep the release's order; the splits are
"train" and "validation" (the held-out set). `prepare` checks the release files' checksums first
(CIFAR's batches are pickles: only a file that matches is unpickled), reads them without extracting,
checks the image counts and writes the rows with records.py (array_record shards described by tfds
metadata); `load` opens them with tfds as random-access sources. Not a tfds builder: without
TensorFlow its shuffler fails once a split passes 1 GB (tf.io.gfile buckets).

On disk, under `data_dir/<source>[/<subset>]/`:
  meta.json             what was prepared (written last: its presence means complete)
  downloads/            the release files, when downloaded (no manual_dir)
  pixel_tokens/1.0.0/   the TFDS dataset: dataset_info.json, features.json, pixel_tokens-*.array_record-*

The releases, and where each fact was found:
- cifar10, https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: MD5 c58f30108f718f92721af3b95e74349a and
  the layout (the CIFAR page, https://www.cs.toronto.edu/~kriz/cifar.html, read in copies of it): members
  cifar-10-batches-py/data_batch_1..5 (train, 50,000 images) and test_batch (10,000), pickles of
  {b"data": uint8 [10000, 3072], b"labels": 10000 ints 0-9}; a row holds 1024 red, 1024 green, then 1024 blue
  values, each plane row-major 32x32. SHA-256 6d958be0...5c001ce: Keras (tensorflow/python/keras/datasets/
  cifar10.py, `file_hash`), which also reshapes rows to (3, 32, 32). TFDS's cifar10 reads the binary release.
- imagenet64, subset "" (the default): van den Oord et al. 2016 (PixelRNN), TFDS `downsampled_imagenet/64x64`:
  http://image-net.org/small/{train,valid}_64x64.tar, 12,112,588,800 and 477,255,680 bytes, SHA-256s below
  (tensorflow_datasets/datasets/downsampled_imagenet/checksums.tsv and its builder); 1,281,149 train and
  49,999 validation PNGs, no labels (the TFDS catalog page). Public code reports those URLs as dead and cites
  a copy on Academic Torrents (96816a530ee002254d29bf7a61c0c158d3dedc3b) whose files have the same SHA-256s.
- imagenet64, subset "labeled": Chrabaszcz, Loshchilov & Hutter 2017, TFDS `imagenet_resized/64x64`:
  Imagenet64_train_part1_npz.zip (train_data_batch_1..5.npz), Imagenet64_train_part2_npz.zip (6..10) and
  Imagenet64_val_npz.zip (val_data.npz), behind a login at https://image-net.org/download-images (SHA-256s:
  tensorflow_datasets/datasets/imagenet_resized/checksums.tsv; members: public scripts that unzip them). Every
  npz, train and validation alike, carries labels: "data" uint8 [N, 12288] = the R, G, B planes of 64x64 (the
  authors' PatrykChrabaszcz/Imagenet32_Scripts image2numpy_imagenet_train.py concatenates r, g, b flattened;
  TFDS reshapes to (3, 64, 64)) and "labels" 1..1000, shifted here to 0..999 as TFDS and the authors do.
  1,281,167 train and 50,000 validation images (the TFDS catalog page for imagenet_resized).
"""

import dataclasses
import itertools
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from md4_jax.data import download, image_readers, records
from md4_jax.data.image_readers import NPZ_FILES
from md4_jax.errors import UserError
from md4_jax.storage.files import write_text_atomically

SPLITS = ("train", "validation")
LEVELS = 256
_BUILDER_DIR = "pixel_tokens/1.0.0"  # <dataset name>/<version>, the layout tfds.builder_from_directory expects


@dataclasses.dataclass(frozen=True)
class ReleaseFile:
  name: str
  url: str
  sha256: str
  md5: str | None = None
  members: tuple = ()  # for a zip of npz files: the npz files it holds


@dataclasses.dataclass(frozen=True)
class Release:
  description: str
  files: tuple  # every ReleaseFile needed
  shape: tuple  # (height, width, channels) of every image
  num_classes: int  # 0: no labels (label -1)
  split_sizes: dict  # split -> images in the official release
  reader: object  # (file name -> location, split) -> iterator of (image_HxWxC uint8, label)
  login_url: str = ""  # set when the files cannot be downloaded without a login
  note: str = ""  # added to the instructions for getting the files by hand


_SMALL, _DOWNSAMPLE = "http://image-net.org/small/", "https://image-net.org/data/downsample/"
RELEASES = {
    ("cifar10", ""): Release(
        "CIFAR-10 (python release)", (ReleaseFile(
            "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            md5="c58f30108f718f92721af3b95e74349a"),),
        (32, 32, 3), num_classes=10, split_sizes={"train": 50_000, "validation": 10_000}, reader=image_readers.cifar10_images),
    ("imagenet64", ""): Release(
        "ImageNet 64x64 (van den Oord et al. 2016, unlabelled)", (
            ReleaseFile("train_64x64.tar", _SMALL + "train_64x64.tar",
                        "e2a2c1947a748d0d256e98e6d82800d855441dc9e4de2e71a773f1324c4524d7"),
            ReleaseFile("valid_64x64.tar", _SMALL + "valid_64x64.tar",
                        "eeac03ec4f585baf871d2b4cb9c974bfe345e74878a74e5820fe6eb1041629cd")),
        (64, 64, 3), num_classes=0, split_sizes={"train": 1_281_149, "validation": 49_999}, reader=image_readers.png_images,
        note=" (image-net.org no longer serves them; a copy with the same SHA-256s is reported on Academic Torrents, "
             "infohash 96816a530ee002254d29bf7a61c0c158d3dedc3b)"),
    ("imagenet64", "labeled"): Release(
        "ImageNet 64x64 with labels (Chrabaszcz et al. 2017, npz)", tuple(
            ReleaseFile(f"Imagenet64_{part}_npz.zip", f"{_DOWNSAMPLE}Imagenet64_{part}_npz.zip", sha256,
                        members=tuple(members)) for part, members, sha256 in (
                ("train_part1", NPZ_FILES["train"][:5],
                 "9422dc1dc5d092e9814a70a1cb7fc74880d2db5d88a0cb8a34ee363b12bde3f1"),
                ("train_part2", NPZ_FILES["train"][5:],
                 "9fafc115afb7e6c301e66dc16b2d737152b427bd5dab26e1293487a6819c7f30"),
                ("val", NPZ_FILES["validation"], "e1e75133158a1924135a9c6f97a80d2d237b158945e0b34074e58e6c8430eeb8"))),
        (64, 64, 3), num_classes=1000, split_sizes={"train": 1_281_167, "validation": 50_000}, reader=image_readers.npz_images,
        login_url="https://image-net.org/download-images",
        note=f", or the npz files unzipped from them ({NPZ_FILES['train'][0]} .. {NPZ_FILES['train'][-1]} and "
             f"{NPZ_FILES['validation'][0]})"),
}


def release_of(source: str, subset: str) -> Release:
  sources = sorted({name for name, _ in RELEASES})
  if source not in sources:
    raise UserError(f"data.source={source!r} is not an image dataset; choose one of {sources}")
  if (source, subset) not in RELEASES:
    valid = [repr(s) + (" (the default)" if not s else "") for name, s in RELEASES if name == source]
    raise UserError(f"data.{source}.subset={subset!r} is not a subset of {source}; valid subsets: {', '.join(valid)}"
                    if len(valid) > 1 else f"subset={subset!r}: {source} has no subsets")
  return RELEASES[(source, subset)]


def prepared_dir(source: str, data_dir: pathlib.Path, subset: str = "") -> pathlib.Path:
  """data_dir/<source>[/<subset>]: where `prepare` writes and `load` reads."""
  release_of(source, subset)
  base = pathlib.Path(data_dir).expanduser() / source
  return base / subset if subset else base


def _manual_hint(release: Release) -> str:
  *others, last = [file.name for file in release.files]
  return f"pass --config.data.manual_dir=DIR holding {', '.join(others)}{' and ' if others else ''}{last}{release.note}"


def _release_files(release: Release, out_dir: pathlib.Path, manual_dir: str, checksums: dict):
  """(file name -> location for the reader, [{"name", checksums}] for meta.json); every archive is verified.

  `checksums` ({file name: {"sha256", "md5"}}) replaces the official values, for test fixtures.
  """
  expected = {file.name: {key: value for key, value in checksums.get(file.name, dataclasses.asdict(file)).items()
                          if key in ("sha256", "md5") and value} for file in release.files}
  if not manual_dir:
    if release.login_url:
      raise UserError(f"{release.description} cannot be downloaded without a login: sign in at {release.login_url}, "
                      f"download {', '.join(file.name for file in release.files)} (Downsampled ImageNet, 64x64, "
                      f"npz format), then {_manual_hint(release)}")
    locations = {file.name: download.fetch(
        file.url, out_dir / "downloads" / file.name, sha256=expected[file.name].get("sha256"),
        md5=expected[file.name].get("md5"), what=f"{release.description}: {file.name}",
        manual_hint=f"or {_manual_hint(release)}") for file in release.files}
    return locations, [{"name": file.name, **expected[file.name]} for file in release.files]
  manual = pathlib.Path(manual_dir).expanduser()
  if not manual.is_dir():
    raise UserError(f"data.manual_dir={manual_dir!r} is not a directory; {_manual_hint(release)}")
  locations, missing = {}, []  # everything is looked for first, so that one message names all that is missing
  for file in release.files:
    if (manual / file.name).is_file():
      locations[file.name] = manual / file.name
      locations.update((name, (manual / file.name, True)) for name in file.members)
    elif file.members:  # the npz files unzipped: DIR/x.npz, or DIR/<zip name>/x.npz as unzip leaves them
      for name in file.members:
        path = next((p for p in (manual / name, manual / file.name[:-4] / name) if p.is_file()), None)
        locations[name] = (path, False)
        missing += [] if path else [f"{name} (from {file.name})"]
    else:
      missing.append(file.name)
  if missing:
    raise UserError(f"data.manual_dir={manual_dir!r} lacks {', '.join(missing)}; {_manual_hint(release)}")
  used = []
  for file in release.files:
    if file.name not in locations:  # unzipped npz files: no official checksum, so theirs is only recorded
      used += [{"name": name, **download.digests_of(locations[name][0])} for name in file.members]
      continue
    path, want = locations[file.name], expected[file.name]
    actual = download.digests_of(path, tuple(want) or ("sha256",))
    if differ := download.checksum_mismatches(want, actual):
      raise UserError(f"{path} is not the official {file.name} ({differ}): it is damaged or another file; get it "
                      f"again from {release.login_url or file.url}")
    used.append({"name": file.name, **actual})
  return locations, used


def features(shape: tuple) -> tfds.features.FeaturesDict:
  """The row format: tokens as raw bytes (tfds's default int64 list would be 50% larger and ~45x slower)."""
  return tfds.features.FeaturesDict({
      "tokens": tfds.features.Tensor(shape=(int(np.prod(shape)),), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.BYTES),
      "label": tfds.features.Tensor(shape=(), dtype=np.int32)})


def _rows(images, split: str, release: Release, expected: int, exact: bool):
  """(image, label) pairs as rows; after the last, the count is checked: not zero, and `expected` when `exact`."""
  count = 0
  for count, (image_HxWxC, label) in enumerate(images, 1):
    yield {"tokens": image_HxWxC.reshape(-1), "label": np.int32(label)}
  if not count or (exact and count != expected):  # raised inside records.write, which then removes its files
    raise UserError(f"the {split} split of {release.description} has {count:,} images, expected {expected:,}: the "
                    "release files are incomplete or not the official ones")


def prepare(source: str, data_dir: pathlib.Path, *, manual_dir: str = "", subset: str = "", max_images: int = 0,
            split_sizes: dict | None = None, checksums: dict | None = None) -> pathlib.Path:
  """Writes both splits of `source` once; returns their directory (see the module docstring).

  `max_images` (0 = all) keeps the first images of each split, for small trials. `split_sizes`
  (the official counts unless given) and `checksums` ({file name: {"sha256", "md5"}} replacing the
  official values) let tests use small fixture files.
  """
  release = release_of(source, subset)
  if max_images < 0:
    raise UserError(f"data.max_images={max_images} must be 0 (all images) or positive")
  out_dir = prepared_dir(source, data_dir, subset)
  request = {"source": source, "subset": subset, "max_images": max_images}
  meta_path = out_dir / "meta.json"
  if meta_path.exists():
    meta = json.loads(meta_path.read_text())
    differ = [f"{key} ({meta.get(key)!r}, not {value!r})" for key, value in request.items() if meta.get(key) != value]
    if not differ:
      return out_dir
    raise UserError(f"{out_dir} already holds {source} prepared with a different {', '.join(differ)}; delete that "
                    "directory or choose another --config.data.dir")
  locations, used = _release_files(release, out_dir, manual_dir, checksums or {})
  sizes = dict(split_sizes or release.split_sizes)
  split_rows = {split: _rows(itertools.islice(release.reader(locations, split), max_images or None), split, release,
                             sizes[split], exact=not max_images) for split in SPLITS}
  split_infos = records.write(
      out_dir / _BUILDER_DIR, features(release.shape), split_rows,
      description=f"{release.description}, flattened channel-interleaved per pixel: token (h*W + w)*C + c.")
  height, width, channels = release.shape
  meta = {**request, "height": height, "width": width, "channels": channels, "levels": LEVELS,
          "num_classes": release.num_classes, "files": used,
          "images_per_split": {split: info.num_examples for split, info in split_infos.items()}}
  write_text_atomically(meta_path, json.dumps(meta, indent=2))
  return out_dir


def load(source: str, data_dir: pathlib.Path, *, subset: str = "") -> tuple[dict, dict]:
  """({"train": rows, "validation": rows}, meta): random-access sources of {"tokens": [H*W*C] uint8, "label"}."""
  out_dir = prepared_dir(source, data_dir, subset)
  meta_path = out_dir / "meta.json"
  if not meta_path.exists():
    subset_flag = f" and --config.data.{source}.subset={subset}" if subset else ""
    raise UserError(f"{source}{'/' + subset if subset else ''} is not prepared in {out_dir}; run `python launch.py "
                    f"--config configs/{source}.py --mode prepare` with --config.data.dir={data_dir}{subset_flag}")
  builder = tfds.builder_from_directory(str(out_dir / _BUILDER_DIR))
  return {split: builder.as_data_source(split=split) for split in SPLITS}, json.loads(meta_path.read_text())
