"""download.fetch: checksums, reuse, atomic writes, and failing fast (seconds) when offline."""

import errno
import hashlib
import time

import pytest

from md4_jax import errors
from md4_jax.data import download
from md4_jax.errors import UserError

HINT = "or pass --config.data.manual_dir=DIR holding thing.zip"


@pytest.fixture
def source(tmp_path):
  path = tmp_path / "source" / "thing.zip"
  path.parent.mkdir()
  path.write_bytes(b"payload bytes " * 100_000)  # 1.4 MB: more than one streamed chunk
  return path


def test_file_url_with_right_checksum(source, tmp_path):
  dest = tmp_path / "out" / "thing.zip"
  expected = hashlib.sha256(source.read_bytes()).hexdigest()
  assert download.sha256_of(source) == expected
  assert download.fetch(source.as_uri(), dest, sha256=expected, what="thing", manual_hint=HINT) == dest
  assert dest.read_bytes() == source.read_bytes()
  assert not dest.with_suffix(".zip.partial").exists()


def test_wrong_checksum_leaves_nothing(source, tmp_path):
  dest = tmp_path / "out" / "thing.zip"
  with pytest.raises(UserError) as error:
    download.fetch(source.as_uri(), dest, sha256="0" * 64, what="thing", manual_hint=HINT)
  message = str(error.value)
  assert "0" * 64 in message and download.sha256_of(source) in message and str(dest) in message
  assert not dest.exists() and list(dest.parent.iterdir()) == []  # the partial file is gone too


def test_existing_file_is_reused_without_network(source, tmp_path, monkeypatch):
  dest = tmp_path / "thing.zip"
  dest.write_bytes(source.read_bytes())
  monkeypatch.setattr(download, "host_reachable", lambda *a, **k: pytest.fail("must not touch the network"))
  url = "http://nonexistent.invalid/thing.zip"
  assert download.fetch(url, dest, sha256=None, what="thing", manual_hint=HINT) == dest
  assert download.fetch(url, dest, sha256=download.sha256_of(source), what="thing", manual_hint=HINT) == dest


def test_existing_file_with_wrong_checksum_is_replaced(source, tmp_path):
  dest = tmp_path / "thing.zip"
  dest.write_bytes(b"stale")
  expected = download.sha256_of(source)
  download.fetch(source.as_uri(), dest, sha256=expected, what="thing", manual_hint=HINT)
  assert download.sha256_of(dest) == expected


def test_missing_file_url_is_a_user_error(tmp_path):
  dest = tmp_path / "thing.zip"
  with pytest.raises(UserError, match="failed"):
    download.fetch((tmp_path / "absent.zip").as_uri(), dest, sha256=None, what="thing", manual_hint=HINT)
  assert not dest.exists() and not dest.with_suffix(".zip.partial").exists()


def _assert_offline_message(message, url, dest):
  for part in ("the thing dataset", url, str(dest), HINT):
    assert part in message


def test_unresolvable_host_fails_fast_for_real(tmp_path):
  """No monkeypatching: .invalid never resolves (RFC 6761), and this machine may have no DNS at all."""
  url, dest = "http://nonexistent.invalid/x.zip", tmp_path / "data" / "x.zip"
  start = time.monotonic()
  with pytest.raises(UserError) as error:
    download.fetch(url, dest, sha256=None, what="the thing dataset", manual_hint=HINT)
  assert time.monotonic() - start < 5.0
  _assert_offline_message(str(error.value), url, dest)
  assert not dest.exists() and not dest.with_suffix(".zip.partial").exists()


def test_unreachable_host_reported_with_manual_instructions(tmp_path, monkeypatch):
  monkeypatch.setattr(download, "host_reachable", lambda url, timeout_s=0: False)
  url, dest = "https://example.com/x.zip", tmp_path / "x.zip"
  with pytest.raises(UserError) as error:
    download.fetch(url, dest, sha256=None, what="the thing dataset", manual_hint=HINT)
  _assert_offline_message(str(error.value), url, dest)


def test_slow_resolver_is_abandoned(monkeypatch):
  """A resolver that hangs (as this machine's can, for minutes) costs only the timeout."""
  monkeypatch.setattr(download.socket, "getaddrinfo", lambda *a, **k: time.sleep(30) or [])  # hangs, then resolves nothing
  start = time.monotonic()
  assert not download.host_reachable("http://example.com/x.zip", timeout_s=0.5)
  assert time.monotonic() - start < 2.0


def test_a_full_disk_is_not_reported_as_a_failed_download(source, tmp_path, monkeypatch):
  class FullDiskFile:  # what open(..., "wb") gives on a full disk: writes fail with ENOSPC
    def __init__(self, *args, **kwargs):
      pass

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def write(self, data):
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(download, "open", FullDiskFile, raising=False)  # the module's own `open` only
  dest = tmp_path / "out" / "thing.zip"
  with pytest.raises(OSError) as raised:
    download.fetch(source.as_uri(), dest, sha256=None, what="thing", manual_hint=HINT)
  assert errors.disk_full(raised.value) and not isinstance(raised.value, UserError)
  assert not dest.exists() and not dest.with_suffix(".zip.partial").exists()
