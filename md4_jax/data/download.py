"""Downloads that fail within seconds when the machine is offline, and never leave a partial file.

Many machines that train models cannot reach the internet, and on some the
resolver retries for minutes before giving up. So `fetch` first checks, with
hard timeouts, that the host answers; if not, it stops at once with a message
that says where to put the file by hand. A download streams into
`DEST.partial` and is renamed to `DEST` only after its checksums match, so a
file under the final name is always complete. Checksums are SHA-256 and, where
a release publishes only that (CIFAR-10), MD5; every one given is checked.
"""

import hashlib
import pathlib
import socket
import threading
import urllib.parse
import urllib.request

from md4_jax.errors import UserError, disk_full

REACH_TIMEOUT_S = 3.0  # for resolving the host, and again for opening the connection
READ_TIMEOUT_S = 60.0  # a stalled transfer fails instead of hanging forever
_CHUNK_BYTES = 1 << 20


_ALGORITHMS = {"sha256": "SHA-256", "md5": "MD5"}  # hashlib name -> the name messages use


def digests_of(path: pathlib.Path, algorithms=("sha256",)) -> dict[str, str]:
  """{hashlib name: hex digest} of a file, all in one pass, read in chunks so large files need no memory."""
  digests = {name: hashlib.new(name) for name in algorithms}
  with open(path, "rb") as file:
    for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
      for digest in digests.values():
        digest.update(chunk)
  return {name: digest.hexdigest() for name, digest in digests.items()}


def sha256_of(path: pathlib.Path) -> str:
  """Hex SHA-256 of a file."""
  return digests_of(path, ("sha256",))["sha256"]


def md5_of(path: pathlib.Path) -> str:
  """Hex MD5 of a file (for releases whose only published checksum is an MD5)."""
  return digests_of(path, ("md5",))["md5"]


def checksum_mismatches(expected: dict[str, str], actual: dict[str, str]) -> str:
  """'SHA-256 <got>, expected <want>' for each digest that differs ('' when all match)."""
  return "; ".join(f"{_ALGORITHMS[name]} {actual[name]}, expected {want}"
                   for name, want in expected.items() if actual[name] != want.lower())


def _resolve(host: str, port: int, timeout_s: float) -> list:
  """getaddrinfo with a hard deadline: it cannot be interrupted, so it runs in a daemon thread we stop waiting for."""
  result = []

  def resolve():
    try:
      result.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except OSError:
      pass  # an empty result means "not resolvable"

  thread = threading.Thread(target=resolve, daemon=True, name=f"resolve-{host}")
  thread.start()
  thread.join(timeout_s)
  return list(result) if not thread.is_alive() else []


def host_reachable(url: str, timeout_s: float = REACH_TIMEOUT_S) -> bool:
  """Whether a TCP connection to the URL's host (or its proxy) opens within about 2 * timeout_s."""
  parsed = urllib.parse.urlsplit(url)
  proxy = urllib.request.getproxies().get(parsed.scheme)
  if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
    parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # the proxy is what we dial
  if not parsed.hostname:
    return False
  port = parsed.port or {"https": 443, "ftp": 21}.get(parsed.scheme, 80)
  for family, kind, proto, _, address in _resolve(parsed.hostname, port, timeout_s):
    try:
      with socket.socket(family, kind, proto) as connection:
        connection.settimeout(timeout_s)
        connection.connect(address)
        return True
    except OSError:
      continue
  return False


def _manual_instructions(url: str, dest: pathlib.Path, manual_hint: str) -> str:
  return f"download {url} on a machine with internet access and put it at {dest}, {manual_hint}"


def fetch(url: str, dest: pathlib.Path, *, sha256: str | None, what: str, manual_hint: str,
          md5: str | None = None) -> pathlib.Path:
  """`dest`, downloaded from `url` unless a file with the right checksums is already there.

  `sha256` and `md5` (hex, either may be None) are checked when given; with neither,
  any complete file is accepted. `what` names the data in messages; `manual_hint` is
  the other way to supply it (e.g. "or pass --config.data.manual_dir=DIR holding
  text8.zip"). Every failure is a UserError that names the URL, `dest` and the hint.
  """
  dest = pathlib.Path(dest)
  expected = {name: value for name, value in (("sha256", sha256), ("md5", md5)) if value is not None}
  stale = ""
  if dest.is_file():
    if not expected:
      return dest
    differ = checksum_mismatches(expected, digests_of(dest, tuple(expected)))
    if not differ:
      return dest
    stale = f" (the file already at {dest} has {differ}; it will be replaced)"
  instructions = _manual_instructions(url, dest, manual_hint)
  if urllib.parse.urlsplit(url).scheme != "file" and not host_reachable(url):
    raise UserError(f"cannot download {what}: the host of {url} is unreachable from this machine (no DNS "
                    f"answer or no connection within {REACH_TIMEOUT_S:.0f} s){stale}. Instead, {instructions}")
  dest.parent.mkdir(parents=True, exist_ok=True)
  partial = dest.with_suffix(dest.suffix + ".partial")
  try:
    digests = {name: hashlib.new(name) for name in expected}
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response, open(partial, "wb") as out:
      for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
        for digest in digests.values():
          digest.update(chunk)
        out.write(chunk)
  except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
    partial.unlink(missing_ok=True)
    if disk_full(error):
      raise  # not the download's fault: launch.py says the disk is full
    raise UserError(f"downloading {what} from {url} failed ({error}). Instead, {instructions}") from error
  differ = checksum_mismatches(expected, {name: digest.hexdigest() for name, digest in digests.items()})
  if differ:
    partial.unlink()
    raise UserError(f"the download of {what} from {url} is corrupt or changed: {differ}. "
                    f"Try again, or {instructions}")
  partial.replace(dest)  # atomic: readers see either no file or the whole verified file
  return dest
