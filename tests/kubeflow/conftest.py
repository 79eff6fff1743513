"""Fixtures of the Kubeflow tests: a small IDX folder, one compiled spec, a fake KFP API."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import yaml

from trainer import idx
from tests.kubeflow.fake_kfp import FakeKfp

PIPELINE_ROOT = 'minio://mlpipeline/v2/artifacts'
IMAGE = 'registry.example/mnist-tfx:1.0'
GPU_IMAGE = 'registry.example/mnist-tfx:1.0-gpu'
SERVING_URI = 'gs://models-bucket/serving'
SECRET_ENV = ('mlpipeline-minio-artifact:accesskey=AWS_ACCESS_KEY_ID,'
              'mlpipeline-minio-artifact:secretkey=AWS_SECRET_ACCESS_KEY')
SECRET_VOLUMES = 'gcs-key:/var/secrets/google'
PULL_SECRET = 'registry-credentials'


@dataclasses.dataclass
class Compiled:
  """A spec compiled through `python -m kubeflow compile`, and what it was made from."""
  path: Path
  spec: Dict[str, Any]
  platform: Dict[str, Any]
  data_dir: Path
  argv: List[str]

  @property
  def tasks(self) -> Dict[str, Any]:
    return self.spec['root']['dag']['tasks']

  def container(self, task: str) -> Dict[str, Any]:
    component = self.spec['components'][self.tasks[task]['componentRef']['name']]
    return self.spec['deploymentSpec']['executors'][component['executorLabel']]['container']


def write_idx_folder(folder: Path, num_train: int, num_test: int) -> Path:
  rng = np.random.default_rng(7)
  folder.mkdir(parents=True, exist_ok=True)
  for source, count in (('train', num_train), ('test', num_test)):
    images_stem, labels_stem = idx.SOURCE_FILES[source]
    idx.write_idx(folder / f'{images_stem}.gz', rng.integers(0, 256, (count, 28, 28)))
    idx.write_idx(folder / f'{labels_stem}.gz', np.arange(count) % 10)
  return folder


def compile_args(data_dir: Path, out: Path, *extra: str) -> List[str]:
  """Flags of a small, fast pipeline whose data folder stands on a "PVC" mount."""
  return ['compile', '--output', str(out), '--eval-size', '20', '--beam-workers', '1',
          '--beam-args=--direct_running_mode=in_memory',
          '--image', IMAGE, '--gpu-image', GPU_IMAGE, '--pipeline-root', PIPELINE_ROOT,
          '--data-uri', str(data_dir), '--serving-uri', SERVING_URI,
          '--pvc-mounts', f'mnist-data:{data_dir.parent}', '--gpu-count', '2',
          '--gpu-type', 'nvidia-tesla-t4', '--tolerations', 'nvidia.com/gpu:NoSchedule,'
          'pool=gpu:NoExecute', '--secret-env', SECRET_ENV, '--secret-volumes', SECRET_VOLUMES,
          *extra]


def load_compiled(path: Path, data_dir: Path, argv: List[str]) -> Compiled:
  documents = list(yaml.safe_load_all(path.read_text()))
  return Compiled(path, documents[0], documents[1] if len(documents) > 1 else {},
                  data_dir, argv)


@pytest.fixture(scope='session', autouse=True)
def _no_kfp_environment() -> Iterator[None]:
  """The tests say every Kubeflow setting they rely on; a developer's shell may not."""
  with pytest.MonkeyPatch.context() as patch:
    for name in list(os.environ):
      if name.startswith(('MNIST_KFP_', 'KFP_', 'KF_PIPELINES_')):
        patch.delenv(name)
    yield


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> Path:
  return write_idx_folder(tmp_path_factory.mktemp('pvc') / 'mnist', 120, 30)


@pytest.fixture(scope='session')
def compiled(data_dir: Path, tmp_path_factory) -> Compiled:
  """The default (open-source KFP 2.2+) spec, compiled once through the CLI."""
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp('spec') / 'mnist.yaml'
  argv = compile_args(data_dir, out, '--image-pull-secrets', PULL_SECRET)
  assert main(argv) == 0
  return load_compiled(out, data_dir, argv)


@pytest.fixture(scope='session')
def compiled_for_2_0(data_dir: Path, tmp_path_factory) -> Compiled:
  """The spec for KFP backend 2.0.x (Kubeflow 1.8): the GPU taint's own toleration only,
  which that backend leaves to the cluster, and no pull secrets (it has no such field)."""
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp('spec') / 'mnist-2.0.yaml'
  argv = compile_args(data_dir, out, '--kfp-backend', '2.0',
                      '--tolerations', 'nvidia.com/gpu:NoSchedule')
  assert main(argv) == 0
  return load_compiled(out, data_dir, argv)


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path) -> Iterator[FakeKfp]:
  """A recording loopback KFP API; kfp's per-user context file is kept out of the way."""
  import kfp  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(kfp.Client, '_LOCAL_KFP_CONTEXT', str(tmp_path / 'context.json'))
  for name in ('KFP_HOST', 'KF_PIPELINES_ENDPOINT'):
    monkeypatch.delenv(name, raising=False)
  server = FakeKfp()
  yield server
  server.stop()


@pytest.fixture(scope='session')
def compiled_with_retries(data_dir: Path, tmp_path_factory) -> Compiled:
  """The spec for KFP backend 2.4.1 and later, with task retries and timeouts (the
  Trainer's own longer one)."""
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp('spec') / 'mnist-2.4.1.yaml'
  argv = compile_args(data_dir, out, '--kfp-backend', '2.4.1', '--task-retries', '2',
                      '--task-retry-backoff', '30', '--task-timeout', '7200',
                      '--trainer-timeout', '43200', '--image-pull-secrets', PULL_SECRET)
  assert main(argv) == 0
  return load_compiled(out, data_dir, argv)
