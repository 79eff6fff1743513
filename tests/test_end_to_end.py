"""The whole DAG on a slice of the shared MNIST, through both ways users run it, then the
continuous-training story on the same outputs.

One shared run (TFX's fixed costs make each run take minutes): `python -m pipeline run`
first, then the same pipeline again through TFX's own CLI (`tfx pipeline create` +
`tfx run create` with the local engine), which must be served from the cache. Then new
data arrives: labelled images in `incoming/` are sealed into span 1 and trained on, and
the better model is pushed with its record (images written during that run wait for the
next); a span of one digit only is stopped by the drift check and nothing served changes.
"""

import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from PIL import Image

from pipeline import component_ids, configs, summary
from serving import process
from tests.serving import browser
from trainer import serving_layout as layout
from trainer import data_layout, features, idx

pytestmark = pytest.mark.e2e

SLICE = {'MNIST_PRESET': 'quick', 'MNIST_LIMIT_TRAIN': '2500', 'MNIST_EVAL_SIZE': '500',
         'MNIST_LIMIT_TEST': '500', 'MNIST_EPOCHS': '1', 'MNIST_BATCH_SIZE': '64',
         'MNIST_ACCURACY_THRESHOLD': '0.5', 'MNIST_DRIFT_MIN_EXAMPLES': '200'}
NEW_SPAN = range(3000, 3600)   # training-file images past the slice: new, good data
LONGER = {'MNIST_EPOCHS': '4'}  # the next runs train longer: a clearly better candidate
RUN_TIMEOUT = 900


def _run(cmd, env, cwd):
  result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
  assert result.returncode == 0, f'{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}'
  return result.stdout + result.stderr


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory, mnist_dir):
  """A writable data folder (spans, incoming/) whose base files are the shared MNIST's."""
  folder = tmp_path_factory.mktemp('data')
  for path in mnist_dir.glob('*-ubyte.gz'):
    (folder / path.name).symlink_to(path)
  return folder


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  out = tmp_path_factory.mktemp('e2e')
  env = {**os.environ, **SLICE, 'MNIST_DATA_DIR': str(data_dir),
         'MNIST_OUTPUT_DIR': str(out), 'LOCAL_HOME': str(out / 'tfx_cli_home')}
  repo = configs.REPO_ROOT
  first = _run([sys.executable, '-m', 'pipeline', 'run'], env, repo)
  tfx_cli = str(Path(sys.executable).parent / 'tfx')
  _run([tfx_cli, 'pipeline', 'create', '--engine', 'local',
        '--pipeline_path', 'pipeline/local_runner.py'], env, repo)
  second = _run([tfx_cli, 'run', 'create', '--engine', 'local', '--pipeline_name', 'mnist'],
                env, repo)
  return configs.load(environ=env), first, second, env


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
  config, first_output, _, _ = runs
  first = _runs_in_order(config)[0]
  states = {c.component_id: c.state for c in first.components}
  assert set(states) == set(component_ids.ALL)
  assert all(state == 'done' for state in states.values()), states
  for component_id in component_ids.ALL:
    assert f'Component {component_id} is running.' in first_output
  # Keras's per-epoch line (with one epoch it prints no `Epoch 1/1` header).
  assert re.search(r'\n\d+/\d+ - \d+s - loss: .* val_accuracy', first_output)
  assert 'MNIST ExampleGen: split train has 2000 examples' in first_output
  assert 'blessed: yes' in first_output


def test_pushed_model_classifies_raw_pixels_as_the_evaluator_measured(runs):
  config, _, _, _ = runs
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
  config, _, _, _ = runs
  all_runs = _runs_in_order(config)
  assert len(all_runs) == 2
  states = {c.component_id: c.state for c in all_runs[1].components}
  for component_id in (component_ids.EXAMPLE_GEN, component_ids.STATISTICS_GEN,
                       component_ids.SCHEMA_GEN, component_ids.EXAMPLE_VALIDATOR,
                       component_ids.ANOMALIES_GATE, component_ids.DRIFT_CHECK,
                       component_ids.TRANSFORM, component_ids.TRAINER):
    assert states[component_id] == 'cached', states
  # The same model, blessed again against itself, is not pushed as a second version.
  assert all_runs[1].blessed is True
  assert all_runs[1].pushed_to == all_runs[0].pushed_to
  assert len([p for p in config.model_serving_dir.iterdir() if p.name.isdigit()]) == 1


# --- continuous training ------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='PNG')
  return out.getvalue()


def _tree(folder: Path):
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
          if p.is_file()}


def _run_writing_during(env, when: str, write) -> subprocess.CompletedProcess:
  """`python -m pipeline run`, calling `write()` once `when` shows in its output."""
  proc = subprocess.Popen([sys.executable, '-m', 'pipeline', 'run'], cwd=configs.REPO_ROOT,
                          env={**env, 'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  timer = threading.Timer(RUN_TIMEOUT, proc.kill)
  timer.start()
  lines, wrote = [], False
  for line in proc.stdout:
    lines.append(line)
    if not wrote and when in line:
      write()
      wrote = True
  proc.wait()
  timer.cancel()
  output = ''.join(lines)
  assert wrote, f'{when!r} never showed:\n{output[-4000:]}'
  return subprocess.CompletedProcess(proc.args, proc.returncode, output)


@pytest.fixture(scope='module')
def page_correction(runs, data_dir, mnist_dir, request):
  """A person draws a test digit on the page served beside run 1's model and sends its
  label as a correction: the loop from the page back into training data."""
  config = runs[0]
  capture = request.config.pluginmanager.getplugin('capturemanager')
  with capture.global_and_fixture_disabled():  # CI's log shows an install as it happens
    chromium = browser.ensure_chromium(print)
  sync_api = pytest.importorskip('playwright.sync_api', reason='playwright is not installed')
  test = idx.load_source(mnist_dir, 'test', 10)
  drawn, label = test.images[3], int(test.labels[3])
  with process.start_server(Path(config.serving_dir), config.model_name,
                            args=['--data-dir', str(data_dir)]) as server, \
      sync_api.sync_playwright() as playwright:
    chrome = playwright.chromium.launch(executable_path=chromium, args=browser.ARGS)
    page = browser.open_page(chrome, server.rest_url + '/')
    browser.draw_with_mouse(page, drawn)
    browser.predicted(page)
    page.keyboard.press(str(label))  # "That's wrong, it was: <label>"
    page.locator('#feedback.saved').wait_for()
    chrome.close()
  [stored] = (data_dir / data_layout.INCOMING_DIR / str(label)).iterdir()
  return label, stored.name


@pytest.fixture(scope='module')
def story(runs, data_dir, mnist_dir, page_correction):
  config, _, _, env = runs
  served = config.model_serving_dir
  first_version = layout.latest_version(served)
  train = idx.load_source(mnist_dir, 'train', NEW_SPAN.stop)
  for i in NEW_SPAN:
    data_layout.write_incoming(data_dir, int(train.labels[i]), _png(train.images[i]), '.png')
  sevens = [i for i in range(NEW_SPAN.stop) if train.labels[i] == 7][:250]

  def late_images():  # one digit only: the next span, and a drifted one
    for i in sevens:
      data_layout.write_incoming(data_dir, 7, _png(train.images[i]), '.png')

  longer = {**env, **LONGER}
  good = _run_writing_during(longer, 'Component MnistExampleGen is running', late_images)
  assert good.returncode == 0, good.stdout[-4000:]
  waiting = data_layout.count_incoming(data_dir)
  second_version = layout.latest_version(served)
  before = _tree(served)
  drifted = subprocess.run([sys.executable, '-m', 'pipeline', 'run'], cwd=configs.REPO_ROOT,
                           env=longer, capture_output=True, text=True, timeout=RUN_TIMEOUT)
  lineage = subprocess.run([sys.executable, '-m', 'pipeline', 'lineage', second_version.name],
                           cwd=configs.REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
  return {'config': config, 'first': first_version, 'second': second_version,
          'lineage': lineage, 'data_dir': data_dir,
          'good': good.stdout, 'waiting': waiting, 'late': len(sevens), 'before': before,
          'drifted': drifted, 'after': _tree(served)}


def test_a_new_span_is_sealed_trained_on_and_pushed_with_its_record(story):
  assert 'Sealed ' in story['good'] and 'into span 1' in story['good']
  # The 600 images written to incoming/ and the page's correction.
  assert 'MNIST ExampleGen: span 1: 541 train, 60 holdout' in story['good']
  assert story['second'] != story['first']
  record = json.loads((story['second'] / layout.EVALUATION_RECORD).read_text())
  assert record['spans'] == [1] and record['version'] == int(story['second'].name)
  metrics = record['metrics']
  assert metrics['baseline_version'] == int(story['first'].name)
  assert metrics['test_accuracy'] >= metrics['baseline_accuracy']
  assert set(metrics['holdout_accuracy']) == {'1'}
  assert set(record['code_fingerprint']) == {'transform', 'trainer'}
  result = summary.last_run(str(story['config'].metadata_path),
                            run_id=_runs_in_order(story['config'])[2].run_id)
  assert result.blessed is True and result.baseline_version == story['first'].name
  assert result.test_accuracy == pytest.approx(metrics['test_accuracy'])


def test_a_correction_sent_from_the_page_is_in_the_pushed_models_lineage(story,
                                                                         page_correction):
  label, name = page_correction
  manifest = data_layout.read_manifest(story['data_dir'] / data_layout.SPANS_DIR / '1')
  assert f'{label}/{name}' in json.dumps(manifest)
  lineage = story['lineage']
  assert lineage.returncode == 0, lineage.stderr
  assert f'Model mnist version {story["second"].name}' in lineage.stdout
  assert re.search(r'spans:\s+base\+1\b', lineage.stdout), lineage.stdout
  assert re.search(rf'baseline:.*\b{story["first"].name}\b', lineage.stdout), lineage.stdout


def test_images_written_during_a_run_wait_for_the_next_span(story):
  assert story['waiting'] == story['late']


def test_a_drifted_span_stops_the_run_and_nothing_served_changes(story):
  drifted = story['drifted']
  output = drifted.stdout + drifted.stderr
  assert drifted.returncode != 0
  assert 'Sealed ' in output and 'into span 2' in output
  assert re.search(r'span 2: label: The Linfty distance between current and previous is '
                   r'[\d.]+ .*above the threshold 0.1', output), output[-4000:]
  assert component_ids.DRIFT_CHECK in output and 'FAILED' in output
  assert story['after'] == story['before']
