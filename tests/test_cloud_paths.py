"""Corpora on Cloud Storage: a ``gs://`` source path reads through the same code as a
local folder, checked offline against a fake bucket.

The two clients a ``gs://`` read goes through are both pointed at one local folder:
  * etils' epath (finding the dataset, ``tasks.json``; TFDS's metadata) lists and opens
    through fsspec's ``gs`` protocol, gcsfs in production, here ``_FakeGCS``: fsspec's
    DirFileSystem over the folder, answering with bucket paths as gcsfs does;
  * array_record reads the records with its own Cloud Storage client (google-cloud-cpp,
    the JSON API's ranged media downloads), here sent to ``_Bucket``, an HTTP server on
    127.0.0.1 serving the folder, through ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` (the
    variable that client honours for emulators).
What is not checked: real Cloud Storage (credentials, latency, gcsfs itself).
"""

import http.server
import os
import shutil
import threading
import urllib.parse

import fsspec
import numpy as np
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from jaxclap import input_pipeline as ip
from jaxclap.corpus import records, speech_tasks
from test_input_pipeline import ByteTokenizer, _cfg, _corpus

BUCKET = "bkt"


class _FakeGCS(DirFileSystem):
  """fsspec's ``gs`` protocol over a local folder holding ``<bucket>/<object>``."""
  protocol = ("gs", "gcs")
  root = None

  def __init__(self, *args, **kwargs):
    super().__init__(path=self.root, fs=LocalFileSystem())

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        return path[len(prefix):]
    return path

  def _join(self, path):
    if isinstance(path, (list, tuple)):
      return [self._join(p) for p in path]
    return super()._join(self._strip_protocol(path))


class _Bucket(http.server.BaseHTTPRequestHandler):
  """``GET /storage/v1/b/<bucket>/o/<object>?alt=media`` with a ``Range`` header."""
  root, requests = None, []

  def log_message(self, *args):
    pass

  def do_GET(self):
    url = urllib.parse.urlparse(self.path)
    parts = url.path.split("/")
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 7 or parts[5] != "o":
      return self._reply(404, b"")
    file = os.path.join(self.root, parts[4], urllib.parse.unquote("/".join(parts[6:])))
    if urllib.parse.parse_qs(url.query).get("alt") != ["media"] or not os.path.isfile(file):
      return self._reply(404, b"")
    type(self).requests.append(os.path.relpath(file, self.root))
    with open(file, "rb") as f:
      data = f.read()
    want = self.headers.get("Range")
    if not want:
      return self._reply(200, data)
    first, last = want.split("=", 1)[1].split("-")
    if first == "":   # the last N bytes
      start, end = max(0, len(data) - int(last)), len(data) - 1
    else:
      start, end = int(first), min(int(last), len(data) - 1) if last else len(data) - 1
    self._reply(206, data[start:end + 1], f"bytes {start}-{end}/{len(data)}")

  def _reply(self, code, body, content_range=None):
    self.send_response(code)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("x-goog-generation", "1")
    if content_range:
      self.send_header("Content-Range", content_range)
    self.end_headers()
    try:
      self.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):   # the reader had enough
      pass


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """A corpus written locally and copied to ``gs://bkt/corpora``; yields both paths."""
  local = _corpus(tmp_path_factory.mktemp("local"), "clips", 12)
  records.write_tasks(local, speech_tasks.TASKS)
  root = tmp_path_factory.mktemp("gcs")
  name, version = os.path.relpath(local, os.path.dirname(os.path.dirname(local))).split(os.sep)
  shutil.copytree(local, root / BUCKET / "corpora" / name / version)
  _FakeGCS.root, _Bucket.root = str(root), str(root)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Bucket)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  from etils.epath import backend
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, _FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()
  old = os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT")
  os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
  try:
    yield local, f"gs://{BUCKET}/corpora", f"gs://{BUCKET}/corpora/{name}/{version}"
  finally:
    server.shutdown()
    if old is None:
      del os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"]
    else:
      os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = old
    from fsspec.registry import _registry
    for protocol in ("gs", "gcs"):
      _registry.pop(protocol, None)   # back to gcsfs, imported when first used
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_a_bucket_corpus_is_found_and_read_as_the_local_one(bucket):
  local, uri, version_dir = bucket
  assert records.dataset_dir(uri) == records.dataset_dir(version_dir) == version_dir
  assert records.read_tasks(uri) == records.read_tasks(local) == speech_tasks.TASKS
  _Bucket.requests.clear()
  here, there = records.open_split(local, "train"), records.open_split(uri, "train")
  assert len(here) == len(there) == 12
  for i in range(12):
    a, b = records.decode(here[i]), records.decode(there[i])
    np.testing.assert_array_equal(a["audio"], b["audio"])
    assert {k: v for k, v in a.items() if k != "audio"} == {
        k: v for k, v in b.items() if k != "audio"}
  # The records came over HTTP from the bucket, not from a local file.
  assert _Bucket.requests and all(r.startswith(f"{BUCKET}/corpora/") and "-train." in r
                                  for r in _Bucket.requests)


def test_the_training_stream_of_a_bucket_is_the_local_one(bucket):
  """The same per-process batches (process 1 of 2) from ``gs://`` as from the folder."""
  local, uri, _ = bucket
  batches = {}
  for path in (local, uri):
    ds = ip.train_dataset(_cfg([dict(path=path)]), ByteTokenizer(), global_batch_size=8,
                          process_index=1, process_count=2, seed=3)
    batches[path] = [ds[i] for i in range(4)]
  for a, b in zip(batches[local], batches[uri]):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_bucket_without_a_corpus_is_named(bucket):
  with pytest.raises(FileNotFoundError, match=f"gs://{BUCKET}/nothing: expected one TFDS"):
    records.open_split(f"gs://{BUCKET}/nothing", "train")
