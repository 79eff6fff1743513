"""The download path against a real HTTP server on loopback serving the shared files."""

import gzip
import hashlib
import http.server
import threading

import pytest

from components import download
from trainer import idx
from tests.conftest import write_idx_folder


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


class _Served:
  """A loopback mirror whose handler answers every GET with `respond(handler, name)`."""

  def __init__(self, respond):
    self.requests = []
    served = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        served.requests.append(self.path.lstrip('/'))
        respond(self, self.path.lstrip('/'))

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url = f'http://127.0.0.1:{self.server.server_port}/'


def _send(handler, body: bytes, length: int) -> None:
  handler.send_response(200)
  handler.send_header('Content-Length', str(length))
  handler.end_headers()
  handler.wfile.write(body)


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
  """A good, a corrupting and a truncating mirror of a tiny dataset registered as 'tiny'."""
  files = write_idx_folder(tmp_path / 'served', 40, 10)
  data = {stem + '.gz': (files / (stem + '.gz')).read_bytes()  # in the published order
          for pair in idx.SOURCE_FILES.values() for stem in pair}
  monkeypatch.setitem(download.DATASETS, 'tiny', download.Dataset(
      mirrors=(), md5={name: hashlib.md5(body).hexdigest() for name, body in data.items()}))
  servers = {
      'good': _Served(lambda h, name: _send(h, data[name], len(data[name]))),
      'corrupt': _Served(lambda h, name: _send(h, data[name][::-1], len(data[name]))),
      'truncated': _Served(lambda h, name: _send(h, data[name][:50], len(data[name]))),
  }
  yield servers, data
  for served in servers.values():
    served.server.shutdown()


def test_ensure_dataset_fetches_only_what_is_missing_past_bad_mirrors(mirrors, tmp_path, capsys):
  servers, data = mirrors
  dest = tmp_path / 'fresh'
  dest.mkdir()
  (dest / 't10k-labels-idx1-ubyte').write_bytes(gzip.decompress(data['t10k-labels-idx1-ubyte.gz']))
  order = [servers[k].url for k in ('corrupt', 'truncated', 'good')]
  assert download.ensure_dataset(str(dest), 'tiny', mirrors=order) == dest
  fetched = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
             't10k-images-idx3-ubyte.gz']
  assert servers['good'].requests == servers['corrupt'].requests == fetched
  for name in fetched:
    assert (dest / name).read_bytes() == data[name]
  assert not list(dest.glob('*.part'))
  err = capsys.readouterr().err
  assert 'fetching 3 missing tiny file(s)' in err
  assert f'{servers["corrupt"].url}train-images-idx3-ubyte.gz: expected MD5' in err
  assert f'{servers["truncated"].url}train-images-idx3-ubyte.gz: truncated: expected' in err
  assert 'train-images-idx3-ubyte.gz: 0.0 MB done' in err

  assert download.ensure_dataset(dest, 'tiny', mirrors=['http://127.0.0.1:9/']) == dest
  assert len(servers['good'].requests) == 3 and capsys.readouterr().err == ''  # no network


def test_ensure_dataset_reports_every_mirror_when_none_serves_a_verified_copy(mirrors, tmp_path):
  servers, _ = mirrors
  with pytest.raises(download.DownloadError, match=(
      r'train-images-idx3-ubyte\.gz:\n  .*expected MD5 [0-9a-f]{32}, found [0-9a-f]{32}\n'
      r'  .*truncated: expected \d+ bytes, received 50\n'
      r'  http://127\.0\.0\.1:9/train-images-idx3-ubyte\.gz: ')):
    download.ensure_dataset(tmp_path / 'fresh', 'tiny', mirrors=[
        servers['corrupt'].url, servers['truncated'].url, 'http://127.0.0.1:9/'])
  assert not list((tmp_path / 'fresh').iterdir())


def test_ensure_dataset_names_the_known_datasets(tmp_path):
  with pytest.raises(download.DownloadError, match="unknown dataset 'digits': expected one of "
                                                   "mnist, fashion-mnist"):
    download.ensure_dataset(tmp_path, 'digits')
