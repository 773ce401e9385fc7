"""Where a run's files live: a local directory or a bucket (gs://), behind one path type, `etils.epath.Path`.

Local paths keep their local meaning (absolute, `~` expanded) and local tricks (tmp + rename, flock, appends).
On an object store a single object write is already atomic and nothing can be appended or locked; the
callers that care ask `is_remote`. Credentials come from the environment, as the client libraries expect
(gcsfs and TensorStore: GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or a
VM's metadata server).
"""

import logging
import os

import fsspec.asyn
from etils import epath

from md4_jax.errors import UserError

REMOTE_SCHEMES = ("gs://",)
UNSUPPORTED_SCHEMES = ("s3://", "az://", "hf://", "http://", "https://")
# A bucket that does not answer within this many seconds is reported, rather than retried for minutes.
PROBE_SECONDS = 10.0
CREDENTIALS_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run "
                    "`gcloud auth application-default login`")


class _WithoutTraceback(logging.Filter):
  """gcsfs logs each request that ran out of retries with its traceback; one line says as much, and a run that
  loses its bucket reports the outage itself (launch.py)."""

  def filter(self, record):
    record.exc_info, record.exc_text = None, None
    return True


logging.getLogger("gcsfs").addFilter(_WithoutTraceback())


def path(text) -> epath.Path:
  """A user's path string (or path) as an epath.Path: gs://... as is; a local one absolute, `~` expanded."""
  text = os.fspath(text)
  if text.startswith(REMOTE_SCHEMES):
    return epath.Path(text)
  if text.startswith(UNSUPPORTED_SCHEMES):
    raise UserError(f"{text}: only local paths and gs:// buckets are supported (not s3://: Orbax 0.12.8 maps "
                    "only gs:// checkpoint paths to a TensorStore driver, see docs/scaling.md); use a local directory or a "
                    "gs:// bucket")
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(location) -> bool:
  return os.fspath(location).startswith(REMOTE_SCHEMES)


def bucket_of(location) -> str:
  return os.fspath(location).split("://", 1)[1].split("/", 1)[0]


def unreachable_bucket(locations) -> str:
  """After an unexpected error: the first gs:// bucket among `locations` that no longer answers ("" if none),
  so that an outage during a run is reported as one, not as whatever the request in flight raised."""
  for location in locations:
    if location and is_remote(location):
      try:
        check_bucket(location)
      except UserError:
        return f"gs://{bucket_of(location)}"
  return ""


def check_bucket(location) -> None:
  """One request, bounded in time: the bucket exists and these credentials may use it (gs:// only).

  Without it a missing bucket shows up as a missing run, and an unreachable server as minutes of retries.
  """
  if not is_remote(location):
    return
  import gcsfs  # noqa: PLC0415 (only bucket runs need it)

  bucket = bucket_of(location)
  endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "storage.googleapis.com")
  try:
    filesystem = gcsfs.GCSFileSystem(skip_instance_cache=True)  # credentials and endpoint as they are now
    fsspec.asyn.sync(filesystem.loop, filesystem._call, "GET", "b/{}", bucket, json_out=True,  # noqa: SLF001
                     timeout=PROBE_SECONDS)
  except FileNotFoundError:
    raise UserError(f"bucket gs://{bucket} does not exist (at {endpoint}); create it (gcloud storage buckets "
                    f"create gs://{bucket}) or fix the bucket name in {os.fspath(location)}") from None
  except fsspec.asyn.FSTimeoutError:
    raise UserError(f"bucket gs://{bucket}: {endpoint} did not answer within {PROBE_SECONDS:.0f} s (retrying); check "
                    f"the network (or STORAGE_EMULATOR_HOST, for an emulator), and if the credentials expired, "
                    f"{CREDENTIALS_HINT}") from None
  except Exception as error:  # noqa: BLE001 (gcsfs raises HttpError, auth errors, client errors)
    code = getattr(error, "code", None) or (403 if str(error).startswith("Forbidden") else None)
    if code in (401, 403):
      raise UserError(f"bucket gs://{bucket}: access denied (HTTP {code}) with the credentials found; "
                      f"{CREDENTIALS_HINT}, for an account that may read and write the bucket") from None
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    raise UserError(f"bucket gs://{bucket} cannot be used ({type(error).__name__}: {first}); "
                    f"{CREDENTIALS_HINT}, and check the network") from None
