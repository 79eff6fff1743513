"""`python -m pipeline history` and `lineage` on a real ML Metadata SQLite store.

The store is written with TFX's own portable helpers, the calls its launcher makes for
every component (`context_lib.prepare_contexts`, `execution_publish_utils.register_execution`,
then `publish_succeeded_execution`, `publish_failed_execution` or
`publish_cached_executions`), so contexts, executions, events and properties have TFX's
shapes. The Evaluator's output holds real TFMA metrics and validation records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tensorflow_model_analysis.proto import metrics_for_slice_pb2, validation_result_pb2
from tfx.orchestration import metadata
from tfx.orchestration.portable import execution_publish_utils
from tfx.orchestration.portable.mlmd import context_lib
from tfx.proto.orchestration import pipeline_pb2
from tfx.types import artifact as tfx_artifact, standard_artifacts

from pipeline import component_ids as ids, configs, history, lineage, summary
from trainer import features

PIPELINE = 'mnist'
FIRST_VERSION = 1700000000      # pushed by run-1, pushed again as "already served" by run-4
HAND_VERSION = 1700000500       # copied in by hand: evaluation.json only, not in ML Metadata
TRAINING = {'architecture': 'cnn', 'epochs': 3, 'batch_size': 128}
ACCURACY_METRIC = summary.ACCURACY_METRIC


def write_tfma_output(folder: Path, accuracy: float, lower_bound: Optional[float]) -> None:
  """What the Evaluator writes: the gate slice's metrics (span=0, the canonical test split)
  and the validation result; a failure when `accuracy` is under `lower_bound`."""
  folder.mkdir(parents=True)
  metrics = metrics_for_slice_pb2.MetricsForSlice()
  metrics.slice_key.single_slice_keys.add(column=features.SPAN_KEY, int64_value=0)
  value = metrics.metric_keys_and_values.add()
  value.key.name = ACCURACY_METRIC
  value.value.double_value.value = accuracy
  validation = validation_result_pb2.ValidationResult(validation_ok=True)
  if lower_bound is not None and accuracy < lower_bound:
    validation.validation_ok = False
    per_slice = validation.metric_validations_per_slice.add()
    per_slice.slice_key.single_slice_keys.add(column=features.SPAN_KEY, int64_value=0)
    failure = per_slice.failures.add()
    failure.metric_key.name = ACCURACY_METRIC
    failure.metric_value.double_value.value = accuracy
    failure.metric_threshold.value_threshold.lower_bound.value = lower_bound
  for name, record in (('metrics', metrics), ('validations', validation)):
    with tf.io.TFRecordWriter(str(folder / f'{name}.tfrecord')) as writer:
      writer.write(record.SerializeToString())


class Recorder:
  """Records component executions in ML Metadata the way TFX's launcher does."""

  def __init__(self, handle: metadata.Metadata, root: Path):
    self.handle, self.root = handle, root

  def contexts(self, run_id: str, component_id: str) -> List[metadata_store_pb2.Context]:
    node_contexts = pipeline_pb2.NodeContexts()
    for type_name, name in (('pipeline', PIPELINE), ('pipeline_run', run_id),
                            ('node', f'{PIPELINE}.{component_id}')):
      spec = node_contexts.contexts.add()
      spec.type.name = type_name
      spec.name.field_value.string_value = name
    return context_lib.prepare_contexts(self.handle, node_contexts)

  def artifact(self, kind, run_id: str, component_id: str, **custom) -> tfx_artifact.Artifact:
    """An output artifact with its folder, and custom properties by value type."""
    result = kind()
    result.uri = str(self.root / run_id / component_id / kind.TYPE_NAME)
    for name, value in custom.items():
      if isinstance(value, int):
        result.set_int_custom_property(name, value)
      elif isinstance(value, float):
        result.set_float_custom_property(name, value)
      else:
        result.set_string_custom_property(name, value)
    return result

  def execute(self, run_id: str, component_id: str, state: str = 'done',
              outputs: Optional[Dict[str, List[tfx_artifact.Artifact]]] = None,
              exec_properties: Optional[Dict[str, str]] = None) -> None:
    contexts = self.contexts(run_id, component_id)
    execution = execution_publish_utils.register_execution(
        self.handle, metadata_store_pb2.ExecutionType(name=f'tfx.{component_id}'), contexts,
        exec_properties=exec_properties)
    time.sleep(0.02)  # distinct creation times, as real components have
    if state == 'done':
      execution_publish_utils.publish_succeeded_execution(
          self.handle, execution.id, contexts, output_artifacts=outputs or {})
    elif state == 'cached':  # outputs: a previous run's artifacts, linked again
      execution_publish_utils.publish_cached_executions(
          self.handle, contexts, [execution], [outputs or {}])
    elif state == 'failed':
      execution_publish_utils.publish_failed_execution(self.handle, contexts, execution.id)
    # 'running': registered only, as a run killed in that component leaves it


@dataclasses.dataclass
class Store:
  config: configs.LocalConfig
  examples: Dict[str, tfx_artifact.Artifact]   # run id -> its ExampleGen output


def record_run(recorder: Recorder, run_id: str, spans: List[int], accuracy: float,
               baseline: Optional[tuple], pushed_version: Optional[int],
               examples: Optional[tfx_artifact.Artifact] = None, spans_list: bool = True,
               evaluation_files: bool = True) -> tfx_artifact.Artifact:
  """A whole run: ExampleGen (cached when `examples` is given), Transform, Trainer,
  Evaluator (blessed at accuracy >= 0.99) and Pusher. `baseline`: (version, accuracy).
  `spans_list`: ExampleGen records the list of spans beside the newest span number;
  `evaluation_files`: the Evaluator's TFMA output is still on disk."""
  if examples is None:
    examples = recorder.artifact(standard_artifacts.Examples, run_id, ids.EXAMPLE_GEN,
                                 **({'spans': json.dumps(spans)} if spans_list else {}))
    examples.span = max(spans, default=0)
    recorder.execute(run_id, ids.EXAMPLE_GEN, outputs={'examples': [examples]})
  else:
    recorder.execute(run_id, ids.EXAMPLE_GEN, 'cached', outputs={'examples': [examples]})
  recorder.execute(run_id, ids.TRANSFORM,
                   exec_properties={'custom_config': json.dumps({'code_fingerprint': 'tf-aaa'})})
  recorder.execute(run_id, ids.TRAINER, exec_properties={'custom_config': json.dumps(
      {'training': TRAINING, 'code_fingerprint': 'tr-bbb'})})
  evaluation = recorder.artifact(standard_artifacts.ModelEvaluation, run_id, ids.EVALUATOR)
  if evaluation_files:
    write_tfma_output(Path(evaluation.uri), accuracy, lower_bound=0.99)
  blessed = int(accuracy >= 0.99)
  blessing = recorder.artifact(
      standard_artifacts.ModelBlessing, run_id, ids.EVALUATOR, blessed=blessed,
      candidate_accuracy=accuracy, baseline_version=str(baseline[0]) if baseline else '',
      **({'baseline_accuracy': baseline[1]} if baseline else {}))
  recorder.execute(run_id, ids.EVALUATOR,
                   outputs={'evaluation': [evaluation], 'blessing': [blessing]})
  push = {'pushed': 0}
  if blessed and pushed_version:
    push = {'pushed': 1, 'pushed_version': str(pushed_version),
            'pushed_destination': str(recorder.root / 'serving' / str(pushed_version))}
  recorder.execute(run_id, ids.PUSHER, outputs={'pushed_model': [recorder.artifact(
      standard_artifacts.PushedModel, run_id, ids.PUSHER, **push)]})
  return examples


@pytest.fixture(scope='module')
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
  """Five runs, oldest first: run-1 blessed and pushed on the base data; run-2 on spans 1
  and 2, not blessed; run-3 cached ExampleGen, Trainer failed; run-4 blessed, its model
  already served; run-5 killed while training."""
  out = tmp_path_factory.mktemp('history')
  config = configs.load(environ={}, output_dir=str(out), pipeline_name=PIPELINE)
  config.metadata_path.parent.mkdir(parents=True)
  examples = {}
  connection = metadata.sqlite_metadata_connection_config(str(config.metadata_path))
  with metadata.Metadata(connection) as handle:
    recorder = Recorder(handle, out / 'pipelines')
    examples['run-1'] = record_run(recorder, 'run-1', [], 0.9912, None, FIRST_VERSION)
    examples['run-2'] = record_run(recorder, 'run-2', [1, 2], 0.9850,
                                   (FIRST_VERSION, 0.9912), None)
    recorder.execute('run-3', ids.EXAMPLE_GEN, 'cached',
                     outputs={'examples': [examples['run-2']]})
    recorder.execute('run-3', ids.TRAINER, 'failed')
    record_run(recorder, 'run-4', [], 0.9912, (FIRST_VERSION, 0.9912), FIRST_VERSION,
               examples=examples['run-1'])
    recorder.execute('run-5', ids.EXAMPLE_GEN, 'cached',
                     outputs={'examples': [examples['run-2']]})
    recorder.execute('run-5', ids.TRAINER, 'running')
  for version in (FIRST_VERSION, HAND_VERSION):
    folder = config.model_serving_dir / str(version)
    folder.mkdir(parents=True)
    (folder / 'saved_model.pb').write_bytes(b'')
  return Store(config, examples)


def _raw_executions(config: configs.LocalConfig, run_id: str
                    ) -> List[metadata_store_pb2.Execution]:
  """A run's executions straight from ML Metadata, not through the code under test."""
  store = summary.open_store(str(config.metadata_path))
  context = store.get_context_by_type_and_name('pipeline_run', run_id)
  return store.get_executions_by_context(context.id)


def _cells(line: str) -> List[str]:
  return re.split(r'\s{2,}', line.strip())


def _history_lines(store: Store) -> List[List[str]]:
  lines = history.history(store.config.metadata_path).splitlines()
  assert _cells(lines[0]) == list(history.HEADER)
  return [_cells(line) for line in lines[1:]]


def test_history_has_one_line_per_run_oldest_first(store):
  rows = _history_lines(store)
  assert [row[2] for row in rows] == ['run-1', 'run-2', 'run-3', 'run-4', 'run-5']
  for row, run_id in zip(rows, ['run-1', 'run-2', 'run-3', 'run-4', 'run-5']):
    executions = _raw_executions(store.config, run_id)
    first = min(e.create_time_since_epoch for e in executions) / 1e3
    last = max(e.last_update_time_since_epoch for e in executions) / 1e3
    assert row[0] == time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(first))
    assert row[1] == history.duration_text(last - first)
  assert [row[0] for row in rows] == sorted(row[0] for row in rows)


def test_history_blessed_and_pushed_run(store):
  started, _, run_id, spans, accuracy, pushed, result = _history_lines(store)[0]
  assert (run_id, spans, accuracy, pushed, result) == (
      'run-1', 'base', '0.9912', str(FIRST_VERSION), 'blessed')


def test_history_not_blessed_run_says_why_and_trained_on_which_spans(store):
  row = _history_lines(store)[1]
  assert row[3:] == ['base+1,2', '0.9850', 'not pushed',
                     f'not blessed: {ACCURACY_METRIC} (span=0 slice): value 0.9850, '
                     f'bound >= 0.99']


def test_history_failed_and_killed_runs_name_the_component(store):
  failed, killed = _history_lines(store)[2], _history_lines(store)[4]
  assert failed[3:] == ['base+1,2', '-', 'not pushed', 'FAILED at Trainer']
  assert killed[3:] == ['base+1,2', '-', 'not pushed',
                        'unfinished at Trainer (running, or killed)']


def test_history_a_version_pushed_before_is_already_served(store):
  row = _history_lines(store)[3]
  assert row[3:] == ['base', '0.9912', f'already served as {FIRST_VERSION}', 'blessed']
  text = summary.last_run(str(store.config.metadata_path), run_id='run-4').format()
  assert '(already served: pushed by run run-1)' in text
  assert 'already served' not in summary.last_run(str(store.config.metadata_path),
                                                  run_id='run-1').format()


def test_summary_still_reads_the_newest_run(store):
  newest = summary.last_run(str(store.config.metadata_path))
  assert newest.run_id == 'run-5'
  assert [(c.component_id, c.state) for c in newest.components] == [
      (ids.EXAMPLE_GEN, 'cached'), (ids.TRAINER, 'running')]


@pytest.mark.parametrize('seconds, text', [
    (None, '-'), (0.4, '0s'), (59.4, '59s'), (61, '1m01s'), (3599, '59m59s'), (3725, '1h02m')])
def test_duration_text(seconds, text):
  assert history.duration_text(seconds) == text


def test_history_of_an_older_pipeline_and_of_deleted_outputs(tmp_path):
  """An ExampleGen that recorded only its newest span; TFMA output no longer on disk."""
  config = configs.load(environ={}, output_dir=str(tmp_path), pipeline_name=PIPELINE)
  config.metadata_path.parent.mkdir(parents=True)
  connection = metadata.sqlite_metadata_connection_config(str(config.metadata_path))
  with metadata.Metadata(connection) as handle:
    record_run(Recorder(handle, tmp_path / 'pipelines'), 'old', [1, 3], 0.9, None, None,
               spans_list=False, evaluation_files=False)
  [row] = [_cells(line) for line in history.history(config.metadata_path).splitlines()[1:]]
  assert row[2:] == ['old', 'base..3', '-', 'not pushed', 'not blessed']


@pytest.mark.parametrize('spans, newest, text', [
    ([], None, 'base'), ([2, 5], 9, 'base+2,5'), (None, 0, 'base'), (None, 4, 'base..4'),
    (None, None, None)])
def test_format_spans(spans, newest, text):
  assert summary.format_spans(spans, newest) == text


def test_history_without_a_store_says_so(tmp_path):
  assert history.history(tmp_path / 'metadata.db') == (
      f'No runs recorded in {tmp_path / "metadata.db"}')


# --- lineage ---------------------------------------------------------------------------


def _write_record(config: configs.LocalConfig, version: int, record: Dict) -> None:
  path = config.model_serving_dir / str(version) / lineage.RECORD_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record))


def _fields(text: str) -> Dict[str, str]:
  """`  name: value` lines of the lineage output."""
  return dict(re.match(r'  ([a-z ]+):\s+(.*)$', line).groups()
              for line in text.splitlines()[1:])


def _lineage(store: Store, version: int) -> lineage.Lineage:
  config = store.config
  return lineage.lineage(config.model_serving_dir, config.model_name, version,
                         config.metadata_path, config.pipeline_name)


FULL_RECORD = {
    'model_name': 'mnist', 'version': FIRST_VERSION, 'pushed_at': '2023-11-14T22:13:20+00:00',
    'pipeline_name': PIPELINE, 'run_id': 'run-1', 'spans': [],
    'metrics': {'test_accuracy': 0.9912, 'baseline_accuracy': None, 'baseline_version': None,
                'holdout_accuracy': {}},
    'code_fingerprint': {'transform': 'tf-aaa', 'trainer': 'tr-bbb'}, 'training': TRAINING,
}


def test_lineage_from_ml_metadata_alone(store):
  result = _lineage(store, FIRST_VERSION)
  fields = _fields(result.format())
  assert result.format().splitlines()[0] == (
      f'Model mnist version {FIRST_VERSION}: {store.config.model_serving_dir / str(FIRST_VERSION)}')
  assert fields['run'] == 'run-1'  # the first push, not run-4 which found it served
  assert fields['pipeline'] == PIPELINE
  assert fields['spans'] == 'base'
  assert json.loads(fields['training']) == TRAINING
  assert fields['code'] == 'transform tf-aaa, trainer tr-bbb'
  assert fields['test accuracy'] == '0.9912'
  assert fields['baseline'] == 'none (no blessed model before)'
  assert fields['blessed'] == 'yes'
  assert fields['pushed at'] == 'unknown' and fields['holdout'] == 'unknown'
  assert fields['sources'] == (f'no {lineage.RECORD_FILE}; '
                               f'ML Metadata {store.config.metadata_path}')


def test_lineage_from_the_record_and_ml_metadata(store):
  _write_record(store.config, FIRST_VERSION, FULL_RECORD)
  try:
    fields = _fields(_lineage(store, FIRST_VERSION).format())
  finally:
    (store.config.model_serving_dir / str(FIRST_VERSION) / lineage.RECORD_FILE).unlink()
  assert fields['run'] == 'run-1' and fields['spans'] == 'base'  # both sources agree
  assert fields['pushed at'] == '2023-11-14T22:13:20+00:00'
  assert fields['holdout'] == 'none'
  assert fields['blessed'] == 'yes'
  assert fields['sources'] == (f'{lineage.RECORD_FILE}; '
                               f'ML Metadata {store.config.metadata_path}')


def test_lineage_shows_both_values_where_the_sources_disagree(store):
  record = {**FULL_RECORD, 'spans': [1], 'code_fingerprint': {'trainer': 'tr-zzz'}}
  _write_record(store.config, FIRST_VERSION, record)
  try:
    fields = _fields(_lineage(store, FIRST_VERSION).format())
  finally:
    (store.config.model_serving_dir / str(FIRST_VERSION) / lineage.RECORD_FILE).unlink()
  assert fields['spans'] == 'base+1 (ML Metadata: base)'
  assert fields['code'] == ('transform unknown, trainer tr-zzz '
                            '(ML Metadata: transform tf-aaa, trainer tr-bbb)')


def test_lineage_from_the_record_alone_prints_missing_keys_as_unknown(store):
  _write_record(store.config, HAND_VERSION, {
      'version': HAND_VERSION, 'run_id': 'run-elsewhere', 'spans': [3, 4],
      'metrics': {'test_accuracy': 0.995, 'baseline_version': 1700000000,
                  'baseline_accuracy': 0.9912, 'holdout_accuracy': {'4': 0.97, '3': 0.981}}})
  fields = _fields(_lineage(store, HAND_VERSION).format())
  assert fields['run'] == 'run-elsewhere'
  assert fields['spans'] == 'base+3,4'
  assert fields['test accuracy'] == '0.9950'
  assert fields['baseline'] == '0.9912 (version 1700000000)'
  assert fields['holdout'] == 'span 3: 0.9810, span 4: 0.9700'
  for missing in ('pipeline', 'started', 'pushed at', 'training', 'code', 'blessed'):
    assert fields[missing] == 'unknown', missing
  assert fields['sources'] == (f'{lineage.RECORD_FILE}; '
                               f'not in ML Metadata {store.config.metadata_path}')


def test_lineage_of_an_unreadable_record_still_prints_ml_metadata(store):
  path = store.config.model_serving_dir / str(FIRST_VERSION) / lineage.RECORD_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('{"run_id": ')
  try:
    fields = _fields(_lineage(store, FIRST_VERSION).format())
  finally:
    path.unlink()
  assert fields['run'] == 'run-1'
  assert fields['sources'].startswith(f'no {lineage.RECORD_FILE} (unreadable: ')


def test_lineage_of_an_unknown_version_names_the_folder_and_its_versions(store):
  with pytest.raises(lineage.UnknownVersion) as raised:
    _lineage(store, 42)
  assert str(raised.value) == (
      f'no version 42 in the serving folder {store.config.model_serving_dir}; '
      f'versions there: {FIRST_VERSION}, {HAND_VERSION}')


def _command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'pipeline', *args], cwd=configs.REPO_ROOT,
                        env={**os.environ, 'PYTHONPATH': str(configs.REPO_ROOT)},
                        capture_output=True, text=True, timeout=300)


def test_the_commands_run_as_a_user_runs_them(store):
  shown = _command('history', '--output-dir', store.config.output_dir)
  assert shown.returncode == 0, shown.stderr
  assert shown.stdout.strip() == history.history(store.config.metadata_path)
  assert not shown.stderr.strip()  # TensorFlow's deprecation warnings are filtered
  unknown = _command('lineage', '42', '--output-dir', store.config.output_dir)
  assert unknown.returncode == 1
  assert unknown.stdout == ''
  assert unknown.stderr.strip() == (
      f'lineage: no version 42 in the serving folder {store.config.model_serving_dir}; '
      f'versions there: {FIRST_VERSION}, {HAND_VERSION}')
