"""The compiled tasks run as pods would: the spec's command and args, launcher-style input.

The subprocess tests run the real entrypoint on the compiled spec (TFX executors, Beam);
the others check each repair of the executor input on its own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kubeflow import entrypoint
from pipeline import component_ids as ids
from tests.kubeflow.launcher import Launcher, tail

EXAMPLES_SCHEMA = 'title: tfx.Examples\ntype: object\nproperties:\n  span:\n    type: integer\n'


def bound(spec: Dict[str, Any], **values: Any) -> Dict[str, Any]:
  """The spec with each task's componentInputParameter resolved as KFP's driver does for
  one run: the run's value if it sets one, else the root default."""
  root = spec['root']['inputDefinitions']['parameters']
  unknown = set(values) - set(root)
  assert not unknown, f'not pipeline parameters: {unknown}'
  result = copy.deepcopy(spec)
  for task in result['root']['dag']['tasks'].values():
    for parameter in task.get('inputs', {}).get('parameters', {}).values():
      name = parameter.pop('componentInputParameter', None)
      if name is not None:
        parameter['runtimeValue'] = {'constant': values.get(name, root[name]['defaultValue'])}
  return result


@pytest.fixture(scope='module')
def launcher(compiled, tmp_path_factory) -> Launcher:
  return Launcher(bound(compiled.spec), tmp_path_factory.mktemp('pod'))


@pytest.fixture(scope='module')
def example_gen(launcher):
  """The ExampleGen task, run once as its pod would run it."""
  result = launcher.run(ids.EXAMPLE_GEN)
  assert result.returncode == 0, tail(result)
  return launcher.executor_output(ids.EXAMPLE_GEN)


def test_example_gen_pod_writes_its_examples_to_the_pipeline_root(launcher, example_gen):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  artifact = example_gen['artifacts']['examples']['artifacts'][0]
  uri = launcher.output_uri(ids.EXAMPLE_GEN, 'examples')
  assert uri.startswith('minio://mlpipeline/v2/artifacts/mnist/')
  assert artifact['uri'] == uri  # the launcher uploads from the mirror and records this
  metadata = artifact['metadata']
  assert json.loads(metadata['split_names']) == ['train', 'eval', 'test', 'holdout']
  assert json.loads(metadata['split_counts']) == {'train': 100, 'eval': 20, 'test': 30,
                                                  'holdout': 0}
  assert metadata['input_fingerprint'].startswith('split:train,num_files:2')  # the driver
  for split, count in (('train', 100), ('eval', 20), ('test', 30)):
    files = sorted(str(p) for p in (launcher.local(uri) / f'Split-{split}').glob('*.gz'))
    assert files, split
    records = tf.data.TFRecordDataset(files, compression_type='GZIP')
    assert sum(1 for _ in records) == count, split


def test_downstream_pod_runs_with_the_types_the_open_source_driver_passes(
    launcher, example_gen):
  examples = Launcher.as_input(example_gen, 'examples', mlmd_id=11)
  assert examples['artifacts'][0]['type'] == {'instanceSchema': ''}
  result = launcher.run(ids.STATISTICS_GEN, {'examples': examples})
  assert result.returncode == 0, tail(result)
  assert 'type tfx.Examples restored' in result.stderr
  artifact = launcher.executor_output(ids.STATISTICS_GEN)['artifacts']['statistics']['artifacts'][0]
  assert artifact['uri'] == launcher.output_uri(ids.STATISTICS_GEN, 'statistics')
  assert json.loads(artifact['metadata']['split_names']) == ['train', 'eval', 'test', 'holdout']
  assert list(launcher.local(artifact['uri']).glob('Split-train/FeatureStats.pb'))


def test_tfx_own_entrypoint_still_fails_on_that_input(launcher, example_gen):
  """tensorflow/tfx#7768: why the spec runs kubeflow.entrypoint. TFX's entrypoint
  (`kubeflow_v2_run_executor`, whose `main` is `_run_executor` on its parsed flags) gets
  the same arguments in-process. When this starts to fail, TFX has fixed the bug and the
  repair of artifact types can go."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry  # pylint: disable=import-outside-toplevel
  examples = Launcher.as_input(example_gen, 'examples', mlmd_id=11)
  args, beam_args = tfx_entry._parse_flags(launcher.args(ids.STATISTICS_GEN, {'examples': examples}))  # pylint: disable=protected-access
  with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
    tfx_entry._run_executor(args, beam_args)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# The repairs, one by one.

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

def run_in_process(launcher: Launcher, task: str, inputs: Dict[str, Any], monkeypatch) -> None:
  """The task's compiled command line through kubeflow.entrypoint, in this process."""
  monkeypatch.setenv(entrypoint.LOCAL_ROOT_ENV, str(launcher.mirror))
  launcher.output_file(task).parent.mkdir(parents=True, exist_ok=True)
  args, beam_args = entrypoint.parse_flags(launcher.args(task, inputs))
  assert args.json_serialized_inputs_spec_args  # the parameter types travel with the task
  entrypoint.run(args, beam_args)


def local_inputs(tmp_path: Path, *names: str) -> Dict[str, Any]:
  """Upstream artifacts as the open-source driver passes them (no type), on local paths."""
  result = {}
  for name in names:
    (tmp_path / name).mkdir()
    result[name] = {'artifacts': [{'name': '7', 'uri': str(tmp_path / name),
                                   'type': {'instanceSchema': ''}}]}
  return result


def test_epochs_and_learning_rate_of_a_run_reach_run_fn_typed(compiled, tmp_path, monkeypatch):
  """KFP sends every number as a double (5 -> 5.0); the Trainer's run_fn gets
  custom_config['training'] with epochs an int, the learning rate a float, the rest as
  compiled."""
  from tfx.components.trainer import executor as trainer_executor  # pylint: disable=import-outside-toplevel
  seen = {}
  monkeypatch.setattr(trainer_executor.GenericExecutor, 'Do',
                      lambda self, i, o, exec_properties: seen.update(exec_properties))
  launcher = Launcher(bound(compiled.spec, epochs=5, learning_rate=0.001), tmp_path / 'pod')
  executor_input = launcher.executor_input(ids.TRAINER, {})
  assert executor_input['inputs']['parameterValues']['epochs'] == 5
  run_in_process(launcher, ids.TRAINER,
                 local_inputs(tmp_path, 'examples', 'transform_graph', 'schema'), monkeypatch)
  training = json.loads(seen['custom_config'])['training']
  assert (training['epochs'], training['learning_rate']) == (5, 0.001)
  assert type(training['epochs']) is int and type(seen['epochs']) is int
  assert training['batch_size'] == 128  # fixed at compile time
  model = launcher.executor_output(ids.TRAINER)['artifacts']['model']['artifacts'][0]
  assert json.loads(model['metadata']['training'])['epochs'] == 5  # the Pusher's record


def test_a_fractional_epochs_is_an_error_not_truncated(compiled, tmp_path, monkeypatch, capsys):
  """The API server takes 2.5 for an integer parameter; TFX's entrypoint would train 2."""
  launcher = Launcher(bound(compiled.spec, epochs=2.5), tmp_path / 'pod')
  monkeypatch.setenv(entrypoint.LOCAL_ROOT_ENV, str(launcher.mirror))
  argv = launcher.args(ids.TRAINER, local_inputs(tmp_path, 'examples', 'transform_graph',
                                                 'schema'))
  assert entrypoint.main(argv) == 2
  assert "parameter 'epochs': expected a whole number, found 2.5" in capsys.readouterr().err


def test_an_unset_parameter_runs_with_the_compiled_default(compiled, tmp_path, monkeypatch):
  from tfx.components.trainer import executor as trainer_executor  # pylint: disable=import-outside-toplevel
  seen = {}
  monkeypatch.setattr(trainer_executor.GenericExecutor, 'Do',
                      lambda self, i, o, exec_properties: seen.update(exec_properties))
  launcher = Launcher(bound(compiled.spec), tmp_path / 'pod')
  run_in_process(launcher, ids.TRAINER,
                 local_inputs(tmp_path, 'examples', 'transform_graph', 'schema'), monkeypatch)
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
  spec = bound(compiled.spec, accuracy_threshold=0.5)
  (tmp_path / 'serving').mkdir()  # nothing served yet
  spec['root']['dag']['tasks'][ids.EVALUATOR]['inputs']['parameters']['serving_dir'] = {
      'runtimeValue': {'constant': str(tmp_path / 'serving')}}
  run_in_process(Launcher(spec, tmp_path / 'pod'), ids.EVALUATOR,
                 local_inputs(tmp_path, 'examples', 'model'), monkeypatch)
  assert type(seen['accuracy_threshold']) is float
  config = json_format.Parse(seen['eval_config'], tfma.EvalConfig())
  (metric,) = [m for spec in config.metrics_specs for m in spec.metrics
               if m.class_name == served_baseline.GATE_METRIC]
  bounds = [t.threshold.value_threshold.lower_bound.value for t in metric.per_slice_thresholds]
  assert bounds == [0.5]
