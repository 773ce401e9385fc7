"""Readers of the image releases' own files (image_datasets.py names them per release): each yields
(image_HxWxC uint8, label) in release order, streamed, and turns a damaged or foreign file into one UserError.
The layouts and where they were found: image_datasets.py's docstring."""

import contextlib
import io
import pathlib
import pickle
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image

from md4_jax.errors import UserError

_CIFAR_MEMBERS = {"train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
                  "validation": ["cifar-10-batches-py/test_batch"]}
NPZ_FILES = {"train": [f"train_data_batch_{i}.npz" for i in range(1, 11)], "validation": ["val_data.npz"]}


def cifar10_images(locations: dict, split: str):
  """(image_32x32x3, label 0-9) of one split of cifar-10-python.tar.gz, read from the tar.gz in release order."""
  archive = locations["cifar-10-python.tar.gz"]
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for member in _CIFAR_MEMBERS[split]:
        try:
          batch = pickle.load(tar.extractfile(member), encoding="bytes")
        except KeyError:
          raise UserError(f"{archive} has no member {member}: it is not CIFAR-10's python release") from None
        data_Nx3072 = batch.get(b"data") if isinstance(batch, dict) else None
        labels = list(batch.get(b"labels", ())) if isinstance(batch, dict) else []
        if not (isinstance(data_Nx3072, np.ndarray) and data_Nx3072.dtype == np.uint8 and data_Nx3072.ndim == 2
                and data_Nx3072.shape[1] == 3072 and len(labels) == len(data_Nx3072)
                and all(0 <= label <= 9 for label in labels)):
          raise UserError(f"{member} in {archive} is not a CIFAR-10 batch (b'data' uint8 [N, 3072], b'labels' 0-9)")
        images_NxHxWxC = data_Nx3072.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> HWC
        yield from zip(images_NxHxWxC, labels)
  except (tarfile.TarError, OSError, EOFError, zlib.error, pickle.UnpicklingError) as error:
    raise UserError(f"{archive} is damaged or not a tar.gz ({error}); get it again") from error


def png_images(locations: dict, split: str, shape=(64, 64, 3)):
  """(image_HxWxC, -1) of every PNG in the split's tar, in archive order, streamed (memory stays flat)."""
  archive = locations[{"train": "train_64x64.tar", "validation": "valid_64x64.tar"}[split]]
  height, width, _ = shape
  try:
    with tarfile.open(archive, "r|") as tar:
      while (member := tar.next()) is not None:
        tar.members.clear()  # tarfile keeps every member seen; 1.28M of them would cost ~1 GB
        if not (member.isfile() and member.name.endswith(".png")):
          continue
        try:
          with Image.open(io.BytesIO(tar.extractfile(member).read())) as png:
            size, mode = png.size, png.mode
            image_HxWxC = np.asarray(png) if (size, mode) == ((width, height), "RGB") else None
        except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for undecodable data
          raise UserError(f"{member.name} in {archive} is not a readable PNG ({error})") from error
        if image_HxWxC is None:
          raise UserError(f"{member.name} in {archive} is a {size[0]}x{size[1]} {mode} image, expected "
                          f"{width}x{height} RGB: {archive.name} is not the {width}x{height} release")
        yield image_HxWxC, -1
  except (tarfile.TarError, OSError, EOFError) as error:
    raise UserError(f"{archive} is damaged or not a tar file ({error}); get it again") from error


def npz_images(locations: dict, split: str, shape=(64, 64, 3)):
  """(image_HxWxC, label 0-999) of the split's npz files in order, from their zip or unzipped; one batch in memory."""
  height, width, channels = shape
  for name in NPZ_FILES[split]:
    path, in_zip = locations[name]
    where = f"{name} in {path}" if in_zip else str(path)
    try:
      with contextlib.ExitStack() as stack:
        file = stack.enter_context(open(path, "rb"))
        if in_zip:  # found by file name: the zips hold Imagenet64_*_npz/<name>
          archive = stack.enter_context(zipfile.ZipFile(file))
          member = next((m for m in archive.namelist() if pathlib.PurePosixPath(m).name == name), None)
          if member is None:
            raise UserError(f"{path} lacks {name}; get the official {path.name} again")
          file = stack.enter_context(archive.open(member))
        with np.load(file, allow_pickle=False) as npz:
          data_NxL, labels = npz["data"], npz["labels"].reshape(-1)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error) as error:
      raise UserError(f"{where} is damaged or not an npz with 'data' and 'labels' ({error})") from error
    if (data_NxL.dtype, data_NxL.shape[1:]) != (np.uint8, (height * width * channels,)) \
        or labels.shape != data_NxL.shape[:1] or not np.all((labels >= 1) & (labels <= 1000)):
      raise UserError(f"{where} is not a Downsampled ImageNet {height}x{width} batch: data {data_NxL.dtype} "
                      f"{data_NxL.shape}, {labels.size} labels (expected uint8 [N, {height * width * channels}] "
                      "and N labels in 1..1000)")
    images_NxHxWxC = data_NxL.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)  # planes -> HWC
    yield from zip(images_NxHxWxC, (labels - 1).tolist())
