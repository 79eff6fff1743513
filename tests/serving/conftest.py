"""Session fixtures: one real model (built once), a second version derived from it, the
in-process reference, and a server process serving both versions with labels."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np
import pytest

from trainer import idx
from pipeline import configs
from serving import process

MNIST_DIR = configs.SHARED_DATA_DIR
CONFIG_FILE = Path(__file__).resolve().parents[2] / 'serving' / 'models.config'
MODEL_NAME = 'mnist'
MAX_BATCH = 100
MAX_BODY = 2 * 1024 * 1024


@pytest.fixture(scope='session')
def mnist_test() -> idx.LabeledImages:
  return idx.load_source(MNIST_DIR, 'test', 200)


@pytest.fixture(scope='session')
def model_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
  """A real model through the real Transform + Trainer + export path (~30 s).

  SERVING_TEST_MODEL may name an export built earlier the same way, to iterate faster."""
  if os.environ.get('SERVING_TEST_MODEL'):
    return Path(os.environ['SERVING_TEST_MODEL'])
  from tests.model_factory import build_serving_model  # pylint: disable=import-outside-toplevel
  train = idx.load_source(MNIST_DIR, 'train', 2000)
  return build_serving_model(tmp_path_factory.mktemp('export') / 'model', train.images,
                             train.labels)


def derive_version(source: Path, target: Path, shift_to_nine: float = 3.0) -> Path:
  """Re-exports `source` with the output bias nudged toward class 9: a model with the same
  signatures but visibly different outputs, so routing to a version can be told apart."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from trainer import export, features  # pylint: disable=import-outside-toplevel
  loaded = tf.saved_model.load(str(source))
  bias = [v for v in loaded.variables if v.shape == (features.NUM_CLASSES,)][-1]
  bias.assign_add(tf.one_hot(9, features.NUM_CLASSES) * shift_to_nine)
  tf.saved_model.save(loaded, str(target),
                      signatures={k: loaded.signatures[k] for k in loaded.signatures})
  export.mark_classify_signature(str(target), features.SERVING_TF_EXAMPLE)
  return target


@pytest.fixture(scope='session')
def model_v2(model_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
  return derive_version(model_v1, tmp_path_factory.mktemp('export-v2') / 'model')


@pytest.fixture(scope='session')
def reference(model_v1: Path, model_v2: Path) -> Dict[int, object]:
  """The same SavedModels loaded in-process: what the server's answers must equal."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return {1: tf.saved_model.load(str(model_v1)), 2: tf.saved_model.load(str(model_v2))}


def push(model: Path, serving_dir: Path, version: int) -> Path:
  """Pushes atomically, as the tests' stand-in Pusher: copy beside, then rename."""
  base = serving_dir / MODEL_NAME
  base.mkdir(parents=True, exist_ok=True)
  staging = base / f'.tmp-{version}'
  shutil.copytree(model, staging)
  target = base / str(version)
  staging.rename(target)
  return target


def reference_predict(reference: Dict[int, object], version: int,
                      images: np.ndarray) -> Dict[str, np.ndarray]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  outputs = reference[version].signatures['serving_default'](
      image=tf.constant(np.asarray(images, np.float32)))
  return {k: v.numpy() for k, v in outputs.items()}


@pytest.fixture(scope='session')
def serving_dir(model_v1: Path, model_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
  root = tmp_path_factory.mktemp('serving')
  push(model_v1, root, 1)
  push(model_v2, root, 2)
  return root


@pytest.fixture(scope='session')
def server(serving_dir: Path) -> Iterator[process.ServerProcess]:
  """Versions 1 and 2 side by side, labels stable=1 and canary=2, small limits."""
  with process.start_server(
      serving_dir, MODEL_NAME,
      args=['--model-config-file', str(CONFIG_FILE), '--max-batch-size', str(MAX_BATCH),
            '--max-body-bytes', str(MAX_BODY)]) as running:
    yield running
    assert running.alive(), 'the server died during the tests:\n' + running.log_text()[-3000:]
    assert 'Traceback' not in running.log_text(), running.log_text()[-3000:]


@pytest.fixture(scope='session')
def default_server(serving_dir: Path) -> Iterator[process.ServerProcess]:
  """The same versions with every limit at its default (serves the latest, version 2)."""
  with process.start_server(serving_dir, MODEL_NAME) as running:
    yield running
    assert running.alive(), 'the server died during the tests:\n' + running.log_text()[-3000:]
    assert 'Traceback' not in running.log_text(), running.log_text()[-3000:]


def memory_kb(pid: int) -> Dict[str, int]:
  """VmRSS and VmHWM (peak resident) of a process, in kB, from /proc."""
  values = {}
  for line in Path(f'/proc/{pid}/status').read_text().splitlines():
    key, _, rest = line.partition(':')
    if key in ('VmRSS', 'VmHWM'):
      values[key] = int(rest.split()[0])
  return values
