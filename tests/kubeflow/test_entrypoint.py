"""Each repair kubeflow.entrypoint makes to the executor input, on its own.

The entrypoint running the compiled tasks (the whole DAG, as the open-source launcher runs
it, TFX's own entrypoint failing on the same input) is test_kfp_run.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kubeflow import entrypoint

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
