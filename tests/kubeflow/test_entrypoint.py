"""Each repair kubeflow.entrypoint makes to the executor input, on its own, and a run's
pipeline parameters reaching the executors typed.

The entrypoint running the compiled tasks (the whole DAG, as the open-source launcher runs
it, TFX's own entrypoint failing on the same input) is test_kfp_run.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kubeflow import entrypoint
from pipeline import component_ids as ids
from tests.kubeflow.conftest import PIPELINE_ROOT
from tests.kubeflow.launcher import KfpRun

EXAMPLES_SCHEMA = 'title: tfx.Examples\ntype: object\nproperties:\n  span:\n    type: integer\n'


def artifact_type(**kind) -> pipeline_spec_pb2.ArtifactTypeSchema:
  return pipeline_spec_pb2.ArtifactTypeSchema(**kind)


@pytest.mark.parametrize('kind, title', [
    ({'instance_schema': EXAMPLES_SCHEMA}, 'tfx.Examples'),
    ({'instance_schema': ''}, None),
    ({'instance_schema': 'tfx.Examples'}, 'tfx.Examples'),
    ({'instance_schema': ': not yaml ['}, None),
    ({'schema_title': 'system.Artifact'}, 'system.Artifact'),
    ({}, None),
])
def test_schema_titles_in_every_form_launchers_use(kind, title):
  assert entrypoint.schema_title(artifact_type(**kind)) == title


def executor_input(**artifacts) -> pipeline_spec_pb2.ExecutorInput:
  return json_format.ParseDict(artifacts, pipeline_spec_pb2.ExecutorInput())


def inputs_spec(**types) -> pipeline_spec_pb2.ComponentInputsSpec:
  return json_format.ParseDict(
      {'artifacts': {name: {'artifactType': {'instanceSchema': schema}}
                     for name, schema in types.items()}},
      pipeline_spec_pb2.ComponentInputsSpec())


@pytest.mark.parametrize('given', [{'instanceSchema': ''}, {'instanceSchema': 'tfx.Examples'},
                                   {'schemaTitle': 'system.Artifact'}, {}])
def test_input_types_come_back_from_the_compiled_inputs_spec(given):
  ei = executor_input(inputs={'artifacts': {'examples': {'artifacts': [
      {'uri': '/x', **({'type': given} if given else {})}]}}})
  entrypoint.fix_artifact_types(ei, inputs_spec(examples=EXAMPLES_SCHEMA))
  fixed = ei.inputs.artifacts['examples'].artifacts[0].type
  assert entrypoint.schema_title(fixed) == 'tfx.Examples'
  assert entrypoint.tfx_class_path('tfx.Examples').endswith('standard_artifacts.Examples')


def test_an_artifact_whose_type_cannot_be_told_is_a_clear_error():
  ei = executor_input(outputs={'artifacts': {'model': {'artifacts': [
      {'uri': '/m', 'type': {'schemaTitle': 'system.Model'}}]}}})
  with pytest.raises(entrypoint.EntrypointError, match="output artifact 'model'"):
    entrypoint.fix_artifact_types(ei, None)


@pytest.mark.parametrize('uri, local', [
    ('minio://mlpipeline/v2/a/b', '/r/minio/mlpipeline/v2/a/b'),
    ('s3://bucket/a', '/r/s3/bucket/a'), ('gs://bucket/a', '/r/gcs/bucket/a'),
    ('/already/local', None)])
def test_local_mirrors_follow_the_launcher(uri, local):
  assert entrypoint.local_mirror(uri, '/r') == local


def test_uris_go_through_the_mirrors_and_come_back_in_the_output(tmp_path: Path):
  root = str(tmp_path)
  (tmp_path / 'minio/b/in').mkdir(parents=True)      # downloaded by the launcher
  (tmp_path / 'minio/b/task').mkdir(parents=True)    # prepared for the output
  ei = executor_input(
      inputs={'artifacts': {'examples': {'artifacts': [{'uri': 'minio://b/in'}]}}},
      outputs={'artifacts': {
          'model': {'artifacts': [{'uri': 'minio://b/task/model'}]},
          'logs': {'artifacts': [{'uri': 'gs://g/task/logs'}]}},  # no mirror: stays on GCS
               'outputFile': str(tmp_path / 'out.json')})
  remote_by_local = entrypoint.localize_uris(ei, root)
  assert ei.inputs.artifacts['examples'].artifacts[0].uri == f'{root}/minio/b/in'
  assert ei.outputs.artifacts['model'].artifacts[0].uri == f'{root}/minio/b/task/model'
  assert ei.outputs.artifacts['logs'].artifacts[0].uri == 'gs://g/task/logs'

  output = {'artifacts': {'model': {'artifacts': [{
      'uri': f'{root}/minio/b/task/model',
      'metadata': {'current_model': f'{root}/minio/b/task/model/Format-Serving', 'n': 1}}]}}}
  (tmp_path / 'out.json').write_text(json.dumps(output))
  entrypoint.restore_uris(str(tmp_path / 'out.json'), remote_by_local)
  restored = json.loads((tmp_path / 'out.json').read_text())['artifacts']['model']
  assert restored['artifacts'][0]['uri'] == 'minio://b/task/model'
  assert restored['artifacts'][0]['metadata'] == {
      'current_model': 'minio://b/task/model/Format-Serving', 'n': 1.0}


def test_an_input_the_launcher_did_not_download_is_a_clear_error(tmp_path: Path):
  ei = executor_input(inputs={'artifacts': {'examples': {'artifacts': [
      {'uri': 's3://b/missing'}]}}})
  with pytest.raises(entrypoint.EntrypointError, match='has no local copy'):
    entrypoint.localize_uris(ei, str(tmp_path))


def test_data_on_object_storage_is_staged_to_a_local_folder(tmp_path: Path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  source = 'ram://bucket/mnist'
  tf.io.gfile.makedirs(source)
  for name in ('train-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
    with tf.io.gfile.GFile(f'{source}/{name}', 'wb') as f:
      f.write(name.encode())
  ei = executor_input(inputs={'parameterValues': {'input_base': source}})
  staged = entrypoint.stage_input_base(ei, str(tmp_path))
  assert ei.inputs.parameter_values['input_base'].string_value == staged
  assert sorted(p.name for p in Path(staged).iterdir()) == [
      't10k-labels-idx1-ubyte.gz', 'train-images-idx3-ubyte.gz']
  assert (Path(staged) / 't10k-labels-idx1-ubyte.gz').read_bytes() == \
      b't10k-labels-idx1-ubyte.gz'
  local = executor_input(inputs={'parameterValues': {'input_base': '/pvc/mnist'}})
  assert entrypoint.stage_input_base(local, str(tmp_path)) is None


# ---------------------------------------------------------------------------
# Pipeline parameters set for one run reach the executors, typed.

def prepared(compiled, tmp_path: Path, task: str,
             **run_values: Any) -> Tuple[KfpRun, Dict[str, Any], List[str]]:
  """The task's executor input and args as the driver and launcher make them for a run
  with these pipeline parameters; upstream artifacts are empty local folders, recorded
  as their producers' outputs (so they reach the task untyped, as from ML Metadata)."""
  run = KfpRun(compiled.spec, tmp_path, PIPELINE_ROOT, runtime_config=run_values)
  for name, source in run.tasks[task]['inputs'].get('artifacts', {}).items():
    output = source['taskOutputArtifact']
    (tmp_path / name).mkdir()
    run.mlmd.record(output['producerTask'], output['outputArtifactKey'],
                    {'uri': str(tmp_path / name)})
  executor_input, args, _ = run.prepare(task, tmp_path / 'pod')
  return run, executor_input, args


def run_in_process(tmp_path: Path, args: List[str], monkeypatch) -> None:
  """The task's compiled command line through kubeflow.entrypoint, in this process."""
  monkeypatch.setenv(entrypoint.LOCAL_ROOT_ENV, str(tmp_path / 'pod' / 'mirror'))
  flags, beam_args = entrypoint.parse_flags(args)
  assert flags.json_serialized_inputs_spec_args  # the parameter types travel with the task
  entrypoint.run(flags, beam_args)


def test_epochs_and_learning_rate_of_a_run_reach_run_fn_typed(compiled, tmp_path, monkeypatch):
  """KFP sends every number as a double (5 -> 5.0); the Trainer's run_fn gets
  custom_config['training'] with epochs an int, the learning rate a float, the rest as
  compiled."""
  from tfx.components.trainer import executor as trainer_executor  # pylint: disable=import-outside-toplevel
  seen = {}
  monkeypatch.setattr(trainer_executor.GenericExecutor, 'Do',
                      lambda self, i, o, exec_properties: seen.update(exec_properties))
  _, executor_input, args = prepared(compiled, tmp_path, ids.TRAINER, epochs=5,
                                     learning_rate=0.001)
  assert executor_input['inputs']['parameterValues']['epochs'] == 5
  run_in_process(tmp_path, args, monkeypatch)
  training = json.loads(seen['custom_config'])['training']
  assert (training['epochs'], training['learning_rate']) == (5, 0.001)
  assert type(training['epochs']) is int and type(seen['epochs']) is int
  assert training['batch_size'] == 128  # fixed at compile time
  output = json.loads(Path(executor_input['outputs']['outputFile']).read_text())
  model = output['artifacts']['model']['artifacts'][0]
  assert json.loads(model['metadata']['training'])['epochs'] == 5  # the Pusher's record


def test_a_fractional_epochs_is_an_error_not_truncated(compiled, tmp_path, monkeypatch, capsys):
  """The API server takes 2.5 for an integer parameter; TFX's entrypoint would train 2."""
  _, _, args = prepared(compiled, tmp_path, ids.TRAINER, epochs=2.5)
  monkeypatch.setenv(entrypoint.LOCAL_ROOT_ENV, str(tmp_path / 'pod' / 'mirror'))
  assert entrypoint.main(args) == 2
  assert "parameter 'epochs': expected a whole number, found 2.5" in capsys.readouterr().err


def test_an_unset_parameter_runs_with_the_compiled_default(compiled, tmp_path, monkeypatch):
  from tfx.components.trainer import executor as trainer_executor  # pylint: disable=import-outside-toplevel
  seen = {}
  monkeypatch.setattr(trainer_executor.GenericExecutor, 'Do',
                      lambda self, i, o, exec_properties: seen.update(exec_properties))
  _, _, args = prepared(compiled, tmp_path, ids.TRAINER)
  run_in_process(tmp_path, args, monkeypatch)
  assert json.loads(seen['custom_config'])['training']['epochs'] == 24


def test_the_accuracy_threshold_of_a_run_is_the_gate_the_evaluator_applies(
    compiled, tmp_path, monkeypatch):
  import tensorflow_model_analysis as tfma  # pylint: disable=import-outside-toplevel
  from tfx.components.evaluator import executor as evaluator_executor  # pylint: disable=import-outside-toplevel
  from components import served_baseline  # pylint: disable=import-outside-toplevel
  seen = {}
  monkeypatch.setattr(evaluator_executor.Executor, 'Do',
                      lambda self, i, o, exec_properties: seen.update(exec_properties))
  monkeypatch.setattr(served_baseline.Executor, '_record', staticmethod(lambda *a: None))
  spec = copy.deepcopy(compiled.spec)
  (tmp_path / 'serving').mkdir()  # nothing served yet
  spec['root']['dag']['tasks'][ids.EVALUATOR]['inputs']['parameters']['serving_dir'] = {
      'runtimeValue': {'constant': str(tmp_path / 'serving')}}
  _, _, args = prepared(dataclasses.replace(compiled, spec=spec), tmp_path, ids.EVALUATOR,
                        accuracy_threshold=0.5)
  run_in_process(tmp_path, args, monkeypatch)
  assert type(seen['accuracy_threshold']) is float
  config = json_format.Parse(seen['eval_config'], tfma.EvalConfig())
  (metric,) = [m for spec in config.metrics_specs for m in spec.metrics
               if m.class_name == served_baseline.GATE_METRIC]
  bounds = [t.threshold.value_threshold.lower_bound.value for t in metric.per_slice_thresholds]
  assert bounds == [0.5]
