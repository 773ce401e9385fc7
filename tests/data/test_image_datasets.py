"""Image datasets (CIFAR-10, ImageNet 64x64 with and without labels) on small fixtures in each release's own format.

The fixtures are written here from HxWxC images, with the layouts the releases document (CIFAR's and
the npz files' R, G, B planes; PNGs in a tar), so a reader that confused the layouts would fail. The
network is never used: downloads are refused by the offline resolver fixture or replaced by manual_dir.
"""

import hashlib
import io
import pickle
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from md4_jax.data import download, image_datasets, image_readers, records
from md4_jax.errors import UserError

CIFAR_SIZES = {"train": 5, "validation": 3}  # per split; train spread over the five data_batch files
IMAGENET_SIZES = {"train": 4, "validation": 2}


def random_images(count, size, seed):
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def planes(images_NxHxWxC):
  """The CIFAR / Downsampled-ImageNet-npz row layout: all red values row-major, then green, then blue."""
  rows = [np.concatenate([image[:, :, c].reshape(-1) for c in range(3)]) for image in images_NxHxWxC]
  return np.stack(rows) if rows else np.zeros((0, images_NxHxWxC[0].size if len(images_NxHxWxC) else 0), np.uint8)


def sha256(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


def add_member(tar, name, payload: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_cifar(directory, train, train_labels, test, test_labels):
  """cifar-10-python.tar.gz: five data_batch pickles (the train images split among them), test_batch, batches.meta."""
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / "cifar-10-python.tar.gz"
  batches = {f"data_batch_{i + 1}": part for i, part in
             enumerate(np.array_split(np.arange(len(train)), 5))}
  with tarfile.open(path, "w:gz") as tar:
    add_member(tar, "cifar-10-batches-py/batches.meta",
               pickle.dumps({b"label_names": [b"airplane", b"automobile"]}, protocol=2))
    for name in ("test_batch", *reversed(list(batches))):  # archive order differs from release order
      images, labels = (test, test_labels) if name == "test_batch" else (train[batches[name]],
                                                                          [train_labels[i] for i in batches[name]])
      batch = {b"batch_label": name.encode(), b"data": planes(images).reshape(-1, 3072), b"labels": list(labels)}
      add_member(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
  return path


def png_bytes(image_HxWxC, mode="RGB"):
  buffer = io.BytesIO()
  Image.fromarray(image_HxWxC).convert(mode).save(buffer, format="PNG")
  return buffer.getvalue()


def write_png_tar(path, directory_name, images, extra=()):
  with tarfile.open(path, "w") as tar:
    info = tarfile.TarInfo(directory_name)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
    for i, image in enumerate(images):
      add_member(tar, f"{directory_name}/{i:05d}.png", png_bytes(image))
    for name, payload in extra:
      add_member(tar, f"{directory_name}/{name}", payload)
  return path


def npz_bytes(images, labels_1_to_1000):
  buffer = io.BytesIO()
  np.savez(buffer, data=planes(images), labels=np.asarray(labels_1_to_1000), mean=np.zeros(12288))
  return buffer.getvalue()


def write_npz_release(directory, train, train_labels, val, val_labels, zipped=True):
  """The three zips with the real member names (or the unzipped layout); train spread over the 10 batches."""
  directory.mkdir(parents=True, exist_ok=True)
  parts = np.array_split(np.arange(len(train)), 10)
  npz = {f"train_data_batch_{i + 1}.npz": npz_bytes(train[part], [train_labels[j] for j in part])
         for i, part in enumerate(parts)}
  npz["val_data.npz"] = npz_bytes(val, val_labels)
  groups = {"Imagenet64_train_part1_npz": [f"train_data_batch_{i}.npz" for i in range(1, 6)],
            "Imagenet64_train_part2_npz": [f"train_data_batch_{i}.npz" for i in range(6, 11)],
            "Imagenet64_val_npz": ["val_data.npz"]}
  for folder, names in groups.items():
    if zipped:
      with zipfile.ZipFile(directory / f"{folder}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in reversed(names):  # member order differs from release order
          archive.writestr(f"{folder}/{name}", npz[name])
    else:
      target = directory / folder if folder.endswith("part2_npz") else directory  # both layouts unzip leaves
      target.mkdir(exist_ok=True)
      for name in names:
        (target / name).write_bytes(npz[name])
  return directory


def checksums_of(directory, md5=False):
  result = {}
  for path in directory.iterdir():
    if path.is_file():
      result[path.name] = {"sha256": sha256(path)}
      if md5:
        result[path.name]["md5"] = hashlib.md5(path.read_bytes()).hexdigest()
  return result


def rows(source):
  tokens = np.stack([np.asarray(source[i]["tokens"]) for i in range(len(source))])
  labels = [int(source[i]["label"]) for i in range(len(source))]
  return tokens, labels


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
  root = tmp_path_factory.mktemp("cifar")
  train, test = random_images(CIFAR_SIZES["train"], 32, 1), random_images(CIFAR_SIZES["validation"], 32, 2)
  train_labels, test_labels = [3, 0, 9, 1, 7], [5, 2, 8]
  path = write_cifar(root / "manual", train, train_labels, test, test_labels)
  return root, path, {"train": (train, train_labels), "validation": (test, test_labels)}


def test_cifar_reader_gives_pixels_and_labels_in_release_order(cifar):
  _, path, expected = cifar
  for split, (images, labels) in expected.items():
    read = list(image_readers.cifar10_images({path.name: path}, split))
    np.testing.assert_array_equal(np.stack([image for image, _ in read]), images)
    assert [label for _, label in read] == labels


def test_pure_red_is_red_in_every_release(tmp_path):
  red_32, red_64 = np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 64, 64, 3), np.uint8)
  red_32[..., 0] = red_64[..., 0] = 255
  cifar = write_cifar(tmp_path / "c", np.repeat(red_32, 5, 0), [0] * 5, red_32, [1])
  tar = write_png_tar(tmp_path / "valid_64x64.tar", "valid_64x64", red_64)
  npz = write_npz_release(tmp_path / "n", np.repeat(red_64, 10, 0), [1] * 10, red_64, [1], zipped=False)
  red_tokens = [255, 0, 0] * 4
  image, _ = next(image_readers.cifar10_images({cifar.name: cifar}, "validation"))
  assert image.reshape(-1)[:12].tolist() == red_tokens and image.reshape(-1).sum() == 255 * 32 * 32
  image, _ = next(image_readers.png_images({"valid_64x64.tar": tar}, "validation"))
  assert image.reshape(-1)[:12].tolist() == red_tokens and image.reshape(-1).sum() == 255 * 64 * 64
  image, _ = next(image_readers.npz_images({"val_data.npz": (npz / "val_data.npz", "")}, "validation"))
  assert image.reshape(-1)[:12].tolist() == red_tokens and image.reshape(-1).sum() == 255 * 64 * 64


def test_cifar_prepare_load_round_trip_and_meta(cifar):
  root, path, expected = cifar
  sums = checksums_of(path.parent, md5=True)
  out_dir = image_datasets.prepare("cifar10", root / "data", manual_dir=str(path.parent), split_sizes=CIFAR_SIZES,
                                   checksums=sums)
  assert out_dir == root / "data" / "cifar10"
  splits, meta = image_datasets.load("cifar10", root / "data")
  for split, (images, labels) in expected.items():
    tokens, read_labels = rows(splits[split])
    assert tokens.dtype == np.uint8 and tokens.shape == (len(images), 32 * 32 * 3)
    np.testing.assert_array_equal(tokens, images.reshape(len(images), -1))  # (h*W + w)*C + c
    assert read_labels == labels
    features = splits[split].dataset_info.features
    assert (features["tokens"].np_dtype, features["label"].np_dtype) == (np.uint8, np.int32)
    assert features["label"].shape == ()
  assert meta == {"source": "cifar10", "subset": "", "max_images": 0, "height": 32, "width": 32, "channels": 3,
                  "levels": 256, "num_classes": 10, "images_per_split": CIFAR_SIZES,
                  "files": [{"name": "cifar-10-python.tar.gz", **sums["cifar-10-python.tar.gz"]}]}
  assert (out_dir / "meta.json").is_file() and not list(out_dir.rglob("*.tmp"))


def test_splits_span_several_shards_in_release_order(cifar, monkeypatch):
  root, path, expected = cifar
  monkeypatch.setattr(records, "SHARD_BYTES", 2 * 32 * 32 * 3)  # 2 images per shard; the label is not counted
  out_dir = image_datasets.prepare("cifar10", root / "shards", manual_dir=str(path.parent), split_sizes=CIFAR_SIZES,
                                   checksums=checksums_of(path.parent, md5=True))
  splits, _ = image_datasets.load("cifar10", root / "shards")
  for split, (images, labels) in expected.items():
    assert splits[split].dataset_info.splits[split].shard_lengths == {"train": [2, 2, 1], "validation": [2, 1]}[split]
    assert len(list((out_dir / "pixel_tokens/1.0.0").glob(f"pixel_tokens-{split}.array_record-*"))) == len(
        splits[split].dataset_info.splits[split].shard_lengths)
    tokens, read_labels = rows(splits[split])
    np.testing.assert_array_equal(tokens, images.reshape(len(images), -1))
    assert read_labels == labels


def test_prepare_again_is_a_no_op_and_other_settings_are_refused(cifar, monkeypatch):
  root, path, _ = cifar
  sums = checksums_of(path.parent, md5=True)
  kwargs = dict(manual_dir=str(path.parent), split_sizes=CIFAR_SIZES, checksums=sums)
  out_dir = image_datasets.prepare("cifar10", root / "again", **kwargs)
  mtimes = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*")}
  monkeypatch.setattr(records, "write", None)  # any rebuild would fail
  monkeypatch.setattr(download, "digests_of", None)  # so would reading the archive again
  assert image_datasets.prepare("cifar10", root / "again", **kwargs) == out_dir
  assert {p: p.stat().st_mtime_ns for p in out_dir.rglob("*")} == mtimes
  with pytest.raises(UserError, match=r"different max_images \(0, not 2\).*delete that directory"):
    image_datasets.prepare("cifar10", root / "again", max_images=2, **kwargs)


def test_max_images_keeps_the_first_images_of_each_split(cifar):
  root, path, expected = cifar
  image_datasets.prepare("cifar10", root / "small", manual_dir=str(path.parent), max_images=2,
                         checksums=checksums_of(path.parent, md5=True))  # official counts: not checked
  splits, meta = image_datasets.load("cifar10", root / "small")
  assert meta["images_per_split"] == {"train": 2, "validation": 2} and meta["max_images"] == 2
  np.testing.assert_array_equal(rows(splits["train"])[0], expected["train"][0][:2].reshape(2, -1))


def test_wrong_counts_are_refused_and_nothing_is_left(cifar):
  root, path, _ = cifar
  with pytest.raises(UserError, match=r"train split of CIFAR-10 \(python release\) has 5 images, expected 50,000"):
    image_datasets.prepare("cifar10", root / "counts", manual_dir=str(path.parent),
                           checksums=checksums_of(path.parent, md5=True))  # the official counts
  assert not [p for p in (root / "counts").rglob("*") if p.is_file()]


def test_a_file_that_is_not_the_official_one_is_refused(cifar):
  """Without `checksums`, the fixture is checked against CIFAR-10's published SHA-256 and MD5, and fails."""
  root, path, _ = cifar
  with pytest.raises(UserError) as error:
    image_datasets.prepare("cifar10", root / "sums", manual_dir=str(path.parent), split_sizes=CIFAR_SIZES)
  message = str(error.value)
  assert "not the official cifar-10-python.tar.gz" in message and sha256(path) in message
  assert "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce" in message
  assert "c58f30108f718f92721af3b95e74349a" in message
  assert not (root / "sums").exists()


def test_fetch_checks_md5(tmp_path):
  source = tmp_path / "release.tar.gz"
  source.write_bytes(b"release bytes " * 1000)
  md5 = hashlib.md5(source.read_bytes()).hexdigest()
  assert download.md5_of(source) == md5
  dest = tmp_path / "out" / "release.tar.gz"
  with pytest.raises(UserError) as error:
    download.fetch(source.as_uri(), dest, sha256=None, md5="0" * 32, what="thing", manual_hint="or not")
  assert f"MD5 {md5}, expected {'0' * 32}" in str(error.value)
  assert not dest.exists() and not list(dest.parent.iterdir())  # the partial file is gone too
  assert download.fetch(source.as_uri(), dest, sha256=sha256(source), md5=md5, what="thing", manual_hint="") == dest
  assert dest.read_bytes() == source.read_bytes()
  dest.write_bytes(b"stale")  # a wrong file in place is replaced
  download.fetch(source.as_uri(), dest, sha256=None, md5=md5, what="thing", manual_hint="")
  assert download.md5_of(dest) == md5


@pytest.mark.usefixtures("offline_dns")
@pytest.mark.parametrize("subset, name", [("", "train_64x64.tar"), (None, "cifar-10-python.tar.gz")])
def test_offline_prepare_fails_within_seconds_naming_file_and_manual_dir(tmp_path, subset, name):
  source = "cifar10" if subset is None else "imagenet64"
  start = time.monotonic()
  with pytest.raises(UserError) as error:
    image_datasets.prepare(source, tmp_path / "data", subset=subset or "")
  assert time.monotonic() - start < 10
  message = str(error.value)
  url = image_datasets.RELEASES[(source, subset or "")].files[0].url
  assert name in message and url in message and "--config.data.manual_dir=DIR holding" in message
  assert str(tmp_path / "data" / source / "downloads" / name) in message  # where a download would go
  assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  train, valid = random_images(IMAGENET_SIZES["train"], 64, 3), random_images(IMAGENET_SIZES["validation"], 64, 4)
  (root / "manual").mkdir()
  write_png_tar(root / "manual" / "train_64x64.tar", "train_64x64", train, extra=[("README", b"not a png")])
  write_png_tar(root / "manual" / "valid_64x64.tar", "valid_64x64", valid)
  return root, {"train": train, "validation": valid}


def test_imagenet64_png_release_round_trip(imagenet):
  root, expected = imagenet
  manual = root / "manual"
  for split, name in (("train", "train_64x64.tar"), ("validation", "valid_64x64.tar")):
    read = list(image_readers.png_images({name: manual / name}, split))
    np.testing.assert_array_equal(np.stack([image for image, _ in read]), expected[split])
    assert {label for _, label in read} == {-1}
  out_dir = image_datasets.prepare("imagenet64", root / "data", manual_dir=str(manual), split_sizes=IMAGENET_SIZES,
                                   checksums=checksums_of(manual))
  assert out_dir == root / "data" / "imagenet64"
  splits, meta = image_datasets.load("imagenet64", root / "data")
  for split, images in expected.items():
    tokens, labels = rows(splits[split])
    np.testing.assert_array_equal(tokens, images.reshape(len(images), -1))
    assert tokens.shape[1] == 64 * 64 * 3 and labels == [-1] * len(images)
  assert (meta["subset"], meta["num_classes"], meta["height"], meta["images_per_split"]) == ("", 0, 64, IMAGENET_SIZES)
  assert [f["name"] for f in meta["files"]] == ["train_64x64.tar", "valid_64x64.tar"]


def test_a_png_of_the_wrong_size_is_refused(imagenet, tmp_path):
  root, expected = imagenet
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "train_64x64.tar").write_bytes((root / "manual" / "train_64x64.tar").read_bytes())
  small = random_images(1, 32, 5)
  write_png_tar(manual / "valid_64x64.tar", "valid_64x64", list(expected["validation"]) + list(small))
  with pytest.raises(UserError, match=r"valid_64x64/00002\.png in .*valid_64x64\.tar is a 32x32 RGB image, "
                                      r"expected 64x64 RGB"):
    image_datasets.prepare("imagenet64", tmp_path / "data", manual_dir=str(manual), split_sizes=IMAGENET_SIZES,
                           checksums=checksums_of(manual))
  assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
  write_png_tar(manual / "valid_64x64.tar", "valid_64x64", [])
  with tarfile.open(manual / "valid_64x64.tar", "a") as tar:
    add_member(tar, "valid_64x64/grey.png", png_bytes(expected["validation"][0], mode="L"))
  with pytest.raises(UserError, match="grey.png .* is a 64x64 L image, expected 64x64 RGB"):
    list(image_readers.png_images({"valid_64x64.tar": manual / "valid_64x64.tar"}, "validation"))


def test_missing_release_files_are_named(imagenet, tmp_path):
  root, _ = imagenet
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "valid_64x64.tar").write_bytes((root / "manual" / "valid_64x64.tar").read_bytes())
  with pytest.raises(UserError, match=r"lacks train_64x64\.tar; pass --config\.data\.manual_dir=DIR holding "
                                      r"train_64x64\.tar and valid_64x64\.tar"):
    image_datasets.prepare("imagenet64", tmp_path / "data", manual_dir=str(manual))
  with pytest.raises(UserError, match="nowhere.*is not a directory"):
    image_datasets.prepare("imagenet64", tmp_path / "data", manual_dir=str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
  root = tmp_path_factory.mktemp("labeled")
  train, val = random_images(12, 64, 6), random_images(3, 64, 7)
  train_labels, val_labels = [1, 1000, 17, 500, 2, 3, 999, 4, 5, 6, 7, 8], [1000, 1, 250]
  write_npz_release(root / "zips", train, train_labels, val, val_labels, zipped=True)
  write_npz_release(root / "unzipped", train, train_labels, val, val_labels, zipped=False)
  return root, {"train": (train, [x - 1 for x in train_labels]), "validation": (val, [x - 1 for x in val_labels])}


@pytest.mark.parametrize("layout", ["zips", "unzipped"])
def test_labeled_imagenet64_round_trip_from_zips_or_npz_files(labeled, layout):
  root, expected = labeled
  manual = root / layout
  sizes = {"train": 12, "validation": 3}
  out_dir = image_datasets.prepare("imagenet64", root / f"data_{layout}", subset="labeled", manual_dir=str(manual),
                                   split_sizes=sizes, checksums=checksums_of(manual))
  assert out_dir == root / f"data_{layout}" / "imagenet64" / "labeled"
  splits, meta = image_datasets.load("imagenet64", root / f"data_{layout}", subset="labeled")
  for split, (images, labels) in expected.items():
    tokens, read_labels = rows(splits[split])
    np.testing.assert_array_equal(tokens, images.reshape(len(images), -1))
    assert read_labels == labels  # 1..1000 became 0..999, batches 1..10 in numeric order
  assert (meta["subset"], meta["num_classes"], meta["images_per_split"]) == ("labeled", 1000, sizes)
  names = [f["name"] for f in meta["files"]]
  if layout == "zips":
    assert names == ["Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip"]
  else:
    assert names == [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]
    assert all(len(f["sha256"]) == 64 for f in meta["files"])


def test_labeled_imagenet64_needs_manual_dir_and_names_missing_files(labeled, tmp_path):
  root, _ = labeled
  with pytest.raises(UserError) as error:
    image_datasets.prepare("imagenet64", tmp_path / "data", subset="labeled")
  message = str(error.value)
  for part in ("https://image-net.org/download-images", "Imagenet64_train_part1_npz.zip",
               "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip", "--config.data.manual_dir=DIR holding",
               "train_data_batch_1.npz", "val_data.npz"):
    assert part in message
  manual = tmp_path / "partial"
  manual.mkdir()
  for name in ("Imagenet64_train_part1_npz.zip", "Imagenet64_val_npz.zip"):
    (manual / name).write_bytes((root / "zips" / name).read_bytes())
  with pytest.raises(UserError, match=r"lacks train_data_batch_6\.npz \(from Imagenet64_train_part2_npz\.zip\).*"
                                      r"train_data_batch_10\.npz"):
    image_datasets.prepare("imagenet64", tmp_path / "data", subset="labeled", manual_dir=str(manual),
                           checksums=checksums_of(manual))


def test_a_corrupt_zip_is_refused_by_its_checksum(labeled, tmp_path):
  root, _ = labeled
  manual = tmp_path / "manual"
  manual.mkdir()
  for path in (root / "zips").iterdir():
    (manual / path.name).write_bytes(path.read_bytes())
  sums = checksums_of(manual)
  damaged = bytearray((manual / "Imagenet64_val_npz.zip").read_bytes())
  damaged[len(damaged) // 2] ^= 0xFF
  (manual / "Imagenet64_val_npz.zip").write_bytes(bytes(damaged))
  with pytest.raises(UserError, match=r"Imagenet64_val_npz\.zip is not the official Imagenet64_val_npz\.zip "
                                      r"\(SHA-256 [0-9a-f]{64}, expected " + sums["Imagenet64_val_npz.zip"]["sha256"]):
    image_datasets.prepare("imagenet64", tmp_path / "data", subset="labeled", manual_dir=str(manual),
                           split_sizes={"train": 12, "validation": 3}, checksums=sums)
  assert not (tmp_path / "data").exists()


def test_load_before_prepare_names_the_prepare_command(tmp_path):
  with pytest.raises(UserError, match=r"python launch\.py --config configs/cifar10\.py --mode prepare.*"
                                      r"--config\.data\.dir="):
    image_datasets.load("cifar10", tmp_path)
  with pytest.raises(UserError, match=r"configs/imagenet64\.py --mode prepare.*--config\.data\.imagenet64\.subset=labeled"):
    image_datasets.load("imagenet64", tmp_path, subset="labeled")


def test_unknown_source_or_subset_is_refused(tmp_path):
  with pytest.raises(UserError, match=r"valid subsets: '' \(the default\), 'labeled'"):
    image_datasets.prepare("imagenet64", tmp_path, subset="32x32")
  with pytest.raises(UserError, match="cifar10 has no subsets"):
    image_datasets.load("cifar10", tmp_path, subset="labeled")
  with pytest.raises(UserError, match="not an image dataset"):
    image_datasets.prepare("mnist", tmp_path)
