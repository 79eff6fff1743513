"""The launcher emulation itself does what KFP 2.2's backend does (no TFX, fast): object
storage by prefix and files only, ML Metadata's value conversions, parameters from
constants and pipeline parameters, the run's parameter checks, the order of tasks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.kubeflow.launcher import (Bucket, KfpRun, LauncherError, Mlmd,
                                     local_path_for_uri, parameter_text)


def test_download_lists_by_key_prefix_as_the_object_store_does(tmp_path: Path):
  """`.../model` also brings `.../model_run`, which lands beside it (filepath.Rel)."""
  bucket = Bucket(tmp_path / 'bucket')
  for key in ('v2/t/model/a.pb', 'v2/t/model/sub/b', 'v2/t/model_run/log', 'v2/t/other/c'):
    path = tmp_path / 'bucket' / 'mlpipeline' / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key)
  local = tmp_path / 'pod' / 'minio' / 'mlpipeline' / 'v2' / 't' / 'model'
  assert bucket.download('minio://mlpipeline/v2/t/model', local) == 3
  assert (local / 'sub' / 'b').read_text() == 'v2/t/model/sub/b'
  assert (local.parent / 'model_run' / 'log').is_file()
  assert not (local.parent / 'other').exists()


def test_upload_copies_files_only(tmp_path: Path):
  bucket = Bucket(tmp_path / 'bucket')
  local = tmp_path / 'out'
  (local / 'empty').mkdir(parents=True)
  (local / 'Split-train').mkdir()
  (local / 'Split-train' / 'data.gz').write_text('x')
  assert bucket.upload(local, 'gs://b/root/task/examples') == 1
  assert bucket.keys('gs://b/root/task/examples') == ['root/task/examples/Split-train/data.gz']
  assert not (tmp_path / 'bucket' / 'b' / 'root' / 'task' / 'examples' / 'empty').exists()
  assert bucket.upload(tmp_path / 'missing', 'gs://b/root/task/x') == 0


def test_local_paths_follow_the_launcher():
  assert local_path_for_uri('minio://mlpipeline/v2/a', Path('/p')) == Path('/p/minio/mlpipeline/v2/a')
  assert local_path_for_uri('gs://b/a', Path('/p')) == Path('/p/gcs/b/a')
  assert local_path_for_uri('s3://b/a', Path('/p')) == Path('/p/s3/b/a')
  assert local_path_for_uri('/mnt/pvc/a', Path('/p')) is None


def test_metadata_come_back_from_ml_metadata_converted():
  mlmd = Mlmd()
  mlmd.record('T', 'examples', {
      'uri': 'minio://b/x', 'type': {'instanceSchema': 'title: tfx.Examples\n'},
      'metadata': {'span': 3, 'ok': True, 'names': '["a"]', 'list': [1], 'd': {'k': 'v'}}})
  artifact = mlmd.output('T', 'examples')
  assert artifact == {'name': '1', 'uri': 'minio://b/x', 'type': {'instanceSchema': ''},
                      'metadata': {'span': 3.0, 'ok': 1.0, 'names': '["a"]',
                                   'list': {'list': [1]}, 'd': {'struct': {'k': 'v'}},
                                   'display_name': 'examples'}}


@pytest.mark.parametrize('value, text', [
    ('s', 's'), (100.0, '100'), (0.5, '0.5'), (1e-05, '0.00001'), (True, 'true'),
    ([1, 'a'], '[1,"a"]'),
    ({'a': 1}, '{"a":1}')])
def test_parameters_as_text_like_the_driver(value: Any, text: str):
  assert parameter_text(value) == text


def small_spec() -> Dict[str, Any]:
  """Two tasks: B reads A's output; parameters as constants and pipeline parameters."""
  component = {
      'executorLabel': 'e',
      'inputDefinitions': {'parameters': {
          'epochs': {'parameterType': 'NUMBER_INTEGER'},
          'data': {'parameterType': 'STRING'},
          'name': {'parameterType': 'STRING'},
          'rate': {'parameterType': 'NUMBER_DOUBLE', 'defaultValue': 0.1,
                   'isOptional': True}},
                          'artifacts': {'x': {'artifactType': {'instanceSchema': 's'}}}},
      'outputDefinitions': {'artifacts': {'out': {'artifactType': {
          'instanceSchema': 'title: tfx.Model\ntype: object\n'}}}}}
  first = copy.deepcopy(component)
  del first['inputDefinitions']['artifacts']
  inputs = {'parameters': {'epochs': {'componentInputParameter': 'epochs'},
                           'data': {'componentInputParameter': 'data_uri'},
                           'name': {'runtimeValue': {'constant': 7.0}}}}
  return {
      'pipelineInfo': {'name': 'p'},
      'components': {'A': first, 'B': component},
      'deploymentSpec': {'executors': {'e': {'container': {
          'command': ['python', '-m', 'x'], 'args': ['--in', '{{$}}']}}}},
      'root': {
          'inputDefinitions': {'parameters': {
              'epochs': {'parameterType': 'NUMBER_INTEGER', 'defaultValue': 24.0},
              'data_uri': {'parameterType': 'STRING'}}},
          'dag': {'tasks': {
              'B': {'componentRef': {'name': 'B'}, 'taskInfo': {'name': 'B'},
                    'inputs': {**inputs, 'artifacts': {'x': {'taskOutputArtifact': {
                        'producerTask': 'A', 'outputArtifactKey': 'out'}}}}},
              'A': {'componentRef': {'name': 'A'}, 'taskInfo': {'name': 'A'},
                    'inputs': inputs}}}}}


def test_pipeline_parameters_come_from_the_run_else_the_defaults(tmp_path: Path):
  run = KfpRun(small_spec(), tmp_path, 'minio://mlpipeline/v2', {'data_uri': 'gs://d'})
  inputs = run.resolve_inputs('A')['parameterValues']
  assert inputs == {'epochs': 24.0, 'data': 'gs://d', 'name': '7'}  # STRING: as text
  run = KfpRun(small_spec(), tmp_path, 'minio://mlpipeline/v2',
               {'data_uri': 'gs://e', 'epochs': 1})
  assert run.resolve_inputs('A')['parameterValues']['epochs'] == 1


@pytest.mark.parametrize('runtime_config, message', [
    ({}, 'parameter data_uri is not optional'),
    ({'data_uri': 3}, 'requires type STRING'),
    ({'data_uri': 'x', 'epoch': 1}, 'no such pipeline parameters'),
])
def test_the_run_is_refused_as_the_api_server_refuses_it(tmp_path: Path, runtime_config,
                                                         message: str):
  with pytest.raises(LauncherError, match=message):
    KfpRun(small_spec(), tmp_path, 'minio://b', runtime_config)


def test_tasks_run_after_the_producers_of_their_inputs(tmp_path: Path):
  """B names A only through its input (no dependentTasks): Argo still waits for A."""
  run = KfpRun(small_spec(), tmp_path, 'minio://b', {'data_uri': 'x'})
  assert run.upstream('B') == ['A'] and run.order() == ['A', 'B']
  with pytest.raises(LauncherError, match="cannot find output artifact key 'out'"):
    run.resolve_inputs('B')  # A has not run


def test_the_executor_input_is_what_the_driver_builds(tmp_path: Path):
  run = KfpRun(small_spec(), tmp_path, 'minio://mlpipeline/v2/artifacts', {'data_uri': 'x'})
  run.mlmd.record('A', 'out', {'uri': 'minio://mlpipeline/v2/artifacts/p/run-1/A/out',
                               'type': {'instanceSchema': 'title: tfx.Model\n'},
                               'metadata': {'n': 1}})
  executor_input = run.executor_input('B', tmp_path / 'pod')
  out = executor_input['outputs']
  assert out['artifacts']['out']['artifacts'][0] == {
      'uri': 'minio://mlpipeline/v2/artifacts/p/run-1/B/out',
      'type': {'instanceSchema': 'title: tfx.Model\ntype: object\n'}, 'metadata': {}}
  assert out['outputFile'] == str(tmp_path / 'pod' / 'tmp/kfp_outputs/output_metadata.json')
  x = executor_input['inputs']['artifacts']['x']['artifacts'][0]
  assert x['type'] == {'instanceSchema': ''} and x['metadata'] == {'n': 1.0, 'display_name': 'out'}
  placeholders = run.placeholders('B', executor_input, tmp_path / 'pod' / 'mirror')
  assert '"rate": 0.1' in placeholders['{{$}}']  # the launcher adds component defaults
  assert placeholders["{{$.inputs.parameters['rate']}}"] == '0.1'
  assert placeholders["{{$.outputs.artifacts['out'].path}}"] == str(
      tmp_path / 'pod/mirror/minio/mlpipeline/v2/artifacts/p/run-1/B/out')
  assert 'rate' not in executor_input['inputs']['parameterValues']


def test_conditions_are_refused_not_ignored(tmp_path: Path):
  spec = small_spec()
  spec['root']['dag']['tasks']['A']['triggerPolicy'] = {
      'condition': "inputs.parameter_values['epochs'] > 1"}
  run = KfpRun(spec, tmp_path, 'minio://b', {'data_uri': 'x'})
  with pytest.raises(LauncherError, match='CEL conditions are not emulated'):
    run.executor_input('A', tmp_path / 'pod')


def test_the_compiled_spec_has_no_conditions_the_emulation_would_skip(compiled):
  """The whole-DAG run (test_kfp_run.py) is faithful only while the spec has none."""
  for name, task in compiled.tasks.items():
    assert not task.get('triggerPolicy', {}).get('condition'), name
    assert not task.get('iteratorPolicy') and not task.get('parameterIterator'), name
