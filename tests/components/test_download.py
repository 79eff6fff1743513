"""The download path against a real HTTP server on loopback serving the shared files."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from components import download
from trainer import idx
from tests.conftest import write_idx_folder


@pytest.fixture
def mirror(tmp_path):
  """Serves a small IDX folder on 127.0.0.1; records the paths requested."""
  served = write_idx_folder(tmp_path / 'served', 40, 10)
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      requests.append(self.path)

  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), partial(Handler, directory=str(served)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
  yield f'http://127.0.0.1:{server.server_port}/', md5, requests
  server.shutdown()


def test_downloads_verifies_and_caches(mirror, tmp_path):
  url, md5, requests = mirror
  dataset = download.Dataset(mirrors=('http://127.0.0.1:9/', url), md5=md5)  # first is dead
  dest = download.download(dataset, tmp_path / 'cache')
  assert sorted(p.name for p in dest.iterdir()) == sorted(md5)
  assert len(idx.load_source(dest, 'train').labels) == 40
  fetched = len(requests)
  download.download(dataset, dest)
  assert len(requests) == fetched == 4  # second call: served from the cache


def test_checksum_mismatch_leaves_nothing_behind(mirror, tmp_path):
  url, md5, _ = mirror
  wrong = dict(md5, **{'t10k-labels-idx1-ubyte.gz': '0' * 32})
  with pytest.raises(download.DownloadError, match='expected MD5 0{32}, found'):
    download.download(download.Dataset(mirrors=(url,), md5=wrong), tmp_path / 'cache')
  assert not (tmp_path / 'cache' / 't10k-labels-idx1-ubyte.gz').exists()
  assert not list((tmp_path / 'cache').glob('*.part'))


def test_published_checksums_are_listed_for_every_file():
  for dataset in download.DATASETS.values():
    assert sorted(dataset.md5) == sorted(name + '.gz' for pair in idx.SOURCE_FILES.values()
                                         for name in pair)
    assert all(len(v) == 32 for v in dataset.md5.values())
