"""Shared fixtures: quiet TensorFlow, the shared MNIST copy, small generated IDX folders, a
loopback download mirror."""

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

from trainer import logs

logs.quiet()

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from trainer import idx  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top


def background_modules(items) -> list:
  """Test modules whose expensive fixture work runs in a thread of its own from the
  session's start (a `BACKGROUND` object with start(mnist_dir, tmp_path_factory) and
  stop(); tests/kubeflow/test_kfp_run.py: processes, so it overlaps the other tests)."""
  return list({id(item.module): item.module for item in items
               if hasattr(getattr(item, 'module', None), 'BACKGROUND')}.values())


def pytest_collection_modifyitems(config, items) -> None:  # pylint: disable=unused-argument
  """Background modules' tests go last, so they wait the least for their results."""
  items.sort(key=lambda item: hasattr(getattr(item, 'module', None), 'BACKGROUND'))


@pytest.fixture(scope='session', autouse=True)
def _background_work(request, tmp_path_factory):
  modules = background_modules(request.session.items)
  for module in modules:
    module.BACKGROUND.start(request.getfixturevalue('mnist_dir'), tmp_path_factory)
  yield
  for module in modules:
    module.BACKGROUND.stop()


@pytest.fixture(scope='session')
def mnist_dir() -> Path:
  """The canonical MNIST files beside the checkout; tests never download."""
  path = configs.SHARED_DATA_DIR
  assert path.is_dir(), f'tests need the shared MNIST copy at {path}'
  return path


def write_idx_folder(folder: Path, num_train: int, num_test: int, seed: int = 0,
                     gzipped: bool = True) -> Path:
  """An MNIST-format folder of random images whose label is written into pixel 0."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  suffix = '.gz' if gzipped else ''
  for source, count in (('train', num_train), ('test', num_test)):
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    images[:, 0, 0] = labels  # lets a test check each image kept its own label
    images_stem, labels_stem = idx.SOURCE_FILES[source]
    idx.write_idx(folder / (images_stem + suffix), images)
    idx.write_idx(folder / (labels_stem + suffix), labels)
  return folder


@pytest.fixture
def small_idx_dir(tmp_path: Path) -> Path:
  return write_idx_folder(tmp_path / 'data', num_train=300, num_test=100)


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
