"""Before a run: a fresh machine fetches MNIST into the download cache (from a loopback
mirror here), the checks run, then incoming/ is sealed into the next span."""

import io

import numpy as np
from PIL import Image

from components import download
from pipeline import configs, preflight
from trainer import data_layout


def test_a_fresh_machine_fetches_mnist_then_seals_incoming(mirror, tmp_path, monkeypatch):
  url, md5, requests = mirror
  cache = tmp_path / 'cache' / 'mnist'
  monkeypatch.setattr(preflight, 'DOWNLOAD_CACHE_DIR', cache)
  monkeypatch.setitem(download.DATASETS, 'mnist', download.Dataset(mirrors=(url,), md5=md5))
  config = configs.load(environ={}, data_dir=cache, output_dir=tmp_path / 'out', eval_size=5)
  assert preflight.prepare(config) is None  # fetched, checked, nothing to seal
  assert sorted(p.name for p in cache.iterdir()) == sorted(md5)
  assert len(requests) == 4

  png = io.BytesIO()
  Image.fromarray(np.full((28, 28), 200, np.uint8)).save(png, format='PNG')
  data_layout.write_incoming(cache, 3, png.getvalue(), '.png')
  assert preflight.prepare(config) == 1  # no second download; incoming sealed as span 1
  assert len(requests) == 4
  assert list(data_layout.sealed_spans(cache)) == [1]
  assert data_layout.count_incoming(cache) == 0


def test_another_missing_data_folder_is_not_downloaded_but_refused(tmp_path):
  config = configs.load(environ={}, data_dir=tmp_path / 'nowhere', output_dir=tmp_path / 'out')
  try:
    preflight.prepare(config)
  except preflight.PreflightError as e:
    assert f'data folder {tmp_path / "nowhere"} does not exist' in str(e)
  else:
    raise AssertionError('a missing --data-dir must stop the run')
  assert not (tmp_path / 'nowhere').exists()
