"""The whole DAG on a slice of the shared MNIST, through both ways users run it.

One shared run (TFX's fixed costs make each run take minutes): `python -m pipeline run`
first, then the same pipeline again through TFX's own CLI (`tfx pipeline create` +
`tfx run create` with the local engine), which must be served from the cache.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from trainer import idx
from pipeline import component_ids, configs, summary
from trainer import features

pytestmark = pytest.mark.e2e

SLICE = {'MNIST_PRESET': 'quick', 'MNIST_LIMIT_TRAIN': '2500', 'MNIST_EVAL_SIZE': '500',
         'MNIST_LIMIT_TEST': '500', 'MNIST_EPOCHS': '2', 'MNIST_BATCH_SIZE': '64', 'MNIST_ACCURACY_THRESHOLD': '0.5'}
RUN_TIMEOUT = 900


def _run(cmd, env, cwd):
  result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
  assert result.returncode == 0, f'{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}'
  return result.stdout + result.stderr


@pytest.fixture(scope='module')
def runs(tmp_path_factory, mnist_dir):
  out = tmp_path_factory.mktemp('e2e')
  env = {**os.environ, **SLICE, 'MNIST_DATA_DIR': str(mnist_dir),
         'MNIST_OUTPUT_DIR': str(out), 'LOCAL_HOME': str(out / 'tfx_cli_home')}
  repo = configs.REPO_ROOT
  first = _run([sys.executable, '-m', 'pipeline', 'run'], env, repo)
  tfx_cli = str(Path(sys.executable).parent / 'tfx')
  _run([tfx_cli, 'pipeline', 'create', '--engine', 'local',
        '--pipeline_path', 'pipeline/local_runner.py'], env, repo)
  second = _run([tfx_cli, 'run', 'create', '--engine', 'local', '--pipeline_name', 'mnist'],
                env, repo)
  return configs.load(environ=env), first, second


def _store(config):
  connection = metadata_store_pb2.ConnectionConfig()
  connection.sqlite.filename_uri = str(config.metadata_path)
  return metadata_store.MetadataStore(connection)


def _runs_in_order(config):
  store = _store(config)
  contexts = sorted(store.get_contexts_by_type(summary.PIPELINE_RUN_CONTEXT),
                    key=lambda c: c.create_time_since_epoch)
  return [summary.last_run(str(config.metadata_path), run_id=c.name) for c in contexts]


def test_every_component_ran_and_progress_was_shown(runs):
  config, first_output, _ = runs
  first = _runs_in_order(config)[0]
  states = {c.component_id: c.state for c in first.components}
  assert set(states) == set(component_ids.ALL)
  assert all(state == 'done' for state in states.values()), states
  for component_id in component_ids.ALL:
    assert f'Component {component_id} is running.' in first_output
  assert re.search(r'Epoch 2/2\n.*?\d+/\d+ - .* val_accuracy', first_output)
  assert 'MNIST ExampleGen: split train has 2000 examples' in first_output
  assert 'blessed: yes' in first_output


def test_pushed_model_classifies_raw_pixels_as_the_evaluator_measured(runs):
  config, _, _ = runs
  versions = [p for p in config.model_serving_dir.iterdir() if p.name.isdigit()]
  assert versions, f'nothing pushed to {config.model_serving_dir}'
  model = tf.saved_model.load(str(max(versions, key=lambda p: int(p.name))))
  test = idx.load_source(Path(config.data_dir), 'test', limit=500)
  out = model.signatures[features.SERVING_DEFAULT](image=tf.constant(test.images, tf.float32))
  accuracy = float(np.mean(out[features.CLASSES_OUTPUT].numpy() == test.labels))
  first = _runs_in_order(config)[0]
  assert accuracy > 0.5
  assert accuracy == pytest.approx(first.test_accuracy, abs=1e-6)
  assert first.blessed is True and first.pushed_to


def test_second_run_through_tfx_cli_is_served_from_cache(runs):
  config, _, _ = runs
  all_runs = _runs_in_order(config)
  assert len(all_runs) == 2
  states = {c.component_id: c.state for c in all_runs[1].components}
  for component_id in ('MnistExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'ExampleValidator',
                       'AnomaliesGate', 'Transform', 'Trainer'):
    assert states[component_id] == 'cached', states
  # The same model, blessed again against itself, is not pushed as a second version.
  assert all_runs[1].blessed is True
  assert all_runs[1].pushed_to == all_runs[0].pushed_to
  assert len([p for p in config.model_serving_dir.iterdir() if p.name.isdigit()]) == 1
