"""Data in a bucket (data.dir or data.path = gs://...), read through a local mirror of it.

The readers memory-map token files and hand local paths to tfds/grain, so a dataset in a bucket is copied
to a local directory before it is read: $MD4_JAX_CACHE (default ~/.cache/md4_jax) / gs / BUCKET / PATH.
An object is downloaded again only when the bucket's copy changed: the mirror keeps a manifest (.mirror.json,
one per dataset directory) of each object's size and generation as downloaded. Each file lands under a
temporary name and is renamed, so processes sharing one mirror (2 on a machine) never read half a file.

`--mode prepare` pulls what the bucket already holds (so a finished dataset is not redone), prepares into the
mirror, and uploads the dataset, its .json files last (they mark a dataset prepared, so a reader never finds
one whose arrays are still uploading). `downloads/` (the raw release files) stay in the local mirror.
"""

import json
import os
import pathlib

import fsspec

from md4_jax.errors import UserError
from md4_jax.storage import paths as storage

CACHE_VARIABLE = "MD4_JAX_CACHE"
MANIFEST = ".mirror.json"
LOCAL_ONLY = "downloads"


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CACHE_VARIABLE) or "~/.cache/md4_jax").expanduser()


def local(location: str) -> pathlib.Path:
  """A local path (`~` expanded) as is; gs://BUCKET/PATH as its place in the mirror."""
  location = os.fspath(location)
  if not storage.is_remote(location):
    return pathlib.Path(location).expanduser()
  scheme, rest = location.split("://", 1)
  return cache_root() / scheme / rest.strip("/")


def remote_of(data_dir: str, directory: pathlib.Path) -> str:
  """The bucket URL of `directory`, a place under local(data_dir)."""
  relative = pathlib.Path(directory).relative_to(local(data_dir)).as_posix()
  return data_dir.rstrip("/") + ("" if relative == "." else "/" + relative)


def _version(info: dict) -> list:
  return [int(info["size"]), str(info.get("generation") or info.get("etag") or info.get("md5Hash") or "")]


def _read_manifest(directory: pathlib.Path) -> dict:
  try:
    return json.loads((directory / MANIFEST).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def _write_manifest(directory: pathlib.Path, manifest: dict) -> None:
  """Atomically, under a name of this process's own (processes sharing a mirror write it at once)."""
  directory.mkdir(parents=True, exist_ok=True)
  partial = directory / f"{MANIFEST}.partial.{os.getpid()}"
  partial.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  partial.replace(directory / MANIFEST)


def _is_current(target: pathlib.Path, version: list, recorded) -> bool:
  """The mirror's copy is this version of the object (`recorded`: the manifest's entry when it was downloaded)."""
  return recorded == version and target.is_file() and target.stat().st_size == version[0]


def _download(filesystem, source: str, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f"{target.name}.partial.{os.getpid()}")
  filesystem.get_file(source, str(partial))
  partial.replace(target)


def pull(data_dir: str, directory: pathlib.Path, *, required: bool, prepare_flags: str = "") -> None:
  """Brings `directory` (a dataset's place under local(data_dir)) up to date with the bucket; local data.dir:
  nothing to do. `required`: the bucket must hold something there (a read, not a prepare); the error's
  command then carries `prepare_flags`."""
  if not storage.is_remote(data_dir):
    return
  storage.check_bucket(data_dir)
  url = remote_of(data_dir, directory)
  filesystem, root = fsspec.core.url_to_fs(url)
  objects = {name: info for name, info in ((name[len(root) + 1:], info)
                                           for name, info in filesystem.find(root, detail=True).items())
             if info.get("type") == "file" and name and name != MANIFEST and name.split("/", 1)[0] != LOCAL_ONLY}
  if required and not objects:
    raise UserError(f"{url} holds no prepared data: run `python launch.py --config CONFIG --mode prepare "
                    f"--config.data.dir={data_dir}{prepare_flags}` with this run's data settings first (it "
                    "prepares locally and uploads)")
  manifest = _read_manifest(directory)
  fresh = {}
  for name, info in sorted(objects.items()):
    target, version = directory / name, _version(info)
    if not _is_current(target, version, manifest.get(name)):
      _download(filesystem, f"{root}/{name}", target)
    fresh[name] = version
  for name in set(manifest) - set(fresh):  # gone from the bucket (a dataset prepared again): not kept stale
    (directory / name).unlink(missing_ok=True)
  if fresh != manifest:
    _write_manifest(directory, fresh)


def push(data_dir: str, directory: pathlib.Path) -> None:
  """Uploads the dataset prepared in `directory` (under local(data_dir)) to the bucket, .json files last."""
  if not storage.is_remote(data_dir):
    return
  url = remote_of(data_dir, directory)
  filesystem, root = fsspec.core.url_to_fs(url)
  names = [path.relative_to(directory).as_posix() for path in pathlib.Path(directory).rglob("*")
           if path.is_file() and path.name != MANIFEST and ".partial." not in path.name
           and path.relative_to(directory).parts[0] != LOCAL_ONLY]
  manifest = _read_manifest(directory)
  for name in sorted(names, key=lambda name: (name.endswith(".json"), name)):
    if manifest.get(name, [None])[0] == (directory / name).stat().st_size:
      try:
        if _version(filesystem.info(f"{root}/{name}")) == manifest[name]:
          continue  # pulled from (or pushed to) the bucket as it is
      except FileNotFoundError:
        pass
    filesystem.put_file(str(directory / name), f"{root}/{name}")
    manifest[name] = _version(filesystem.info(f"{root}/{name}"))
  _write_manifest(directory, manifest)
  print(f"uploaded {len(names)} files of {directory} to {url}")


def local_file(location: str, what: str = "data.path") -> str:
  """data.path as a local file: itself, or a bucket object downloaded into the mirror (again only if changed)."""
  if not storage.is_remote(location):
    return location
  storage.check_bucket(location)
  filesystem, name = fsspec.core.url_to_fs(location)
  try:
    info = filesystem.info(name)
  except FileNotFoundError:
    info = None
  if info is None or info.get("type") != "file":
    raise UserError(f"{what}={location!r} is not an object in the bucket; upload it (gcloud storage cp FILE "
                    f"{location}) or fix the path")
  target = local(location)
  manifest, version = _read_manifest(target.parent), _version(info)
  if not _is_current(target, version, manifest.get(target.name)):
    _download(filesystem, name, target)
    _write_manifest(target.parent, {**_read_manifest(target.parent), target.name: version})
  return str(target)
