"""Container entrypoint of the pipeline's TFX components on Kubeflow Pipelines.

The compiled spec runs `python -m kubeflow.entrypoint` with the arguments TFX's v2
compiler writes for TFX's own entrypoint (`kubeflow_v2_run_executor`):
`--executor_class_path`, `--json_serialized_invocation_args {{$}}`,
`--json_serialized_inputs_spec_args`, then Beam flags. TFX 1.16's entrypoint was written
for Vertex AI Pipelines and fails under the open-source KFP v2 launcher
(tensorflow/tfx#7768). This one repairs the executor input, hands it to TFX's
`_run_executor` unchanged, then repairs the executor output:

1. Artifact types. The open-source driver passes the input artifacts of upstream tasks
   with an empty `instanceSchema` (its MLMD lookup does not keep the schema), and some
   versions pass a bare title or a `system.*` title. TFX yaml-parses the schema to find
   the artifact class and crashes (`'NoneType' object has no attribute 'get'`). The type
   is restored from the component's inputs spec (compiled into the arguments), else from
   the artifact's own title.
2. Artifact URIs. The launcher names artifacts by object-store URI (`minio://`, `s3://`,
   `gs://` under the pipeline root) and itself copies inputs to local mirrors
   (`/minio/...`, `/s3/...`, `/gcs/...`) before the container runs and uploads outputs
   from them after. TensorFlow and Beam cannot open `minio://` (nor `s3://` without
   tensorflow-io), so executors work on the mirrors, and the executor output names the
   original URIs again (a local path there would be recorded instead of the upload).
3. ExampleGen's driver. TFX attaches the file-based ExampleGen driver (span, version and
   input fingerprint) as a pre-cache-check hook that only Vertex runs; it runs here,
   in-process, so the Examples artifact carries the same properties as in local runs.
4. Integer parameters. KFP carries every number as a double and its API server takes 2.5
   for an integer pipeline parameter; TFX's entrypoint then truncates it to 2 (a run's
   `epochs`). A fractional value for a parameter the inputs spec declares an integer is
   an error here instead.
5. Data staging. The MNIST IDX reader (trainer/idx.py) and the span reader read local
   files only; an `input_base` on object storage (gs://) is copied to a local folder
   first: the base files and the sealed spans (`spans/<N>/`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
import yaml

from trainer import data_layout, logs

# The launcher's local mirror of each scheme: always under `/` (launcher_v2.go
# localPathForURI, KFP 2.0.5 to 2.5.0; the launcher has no setting to move it).
# `ARTIFACT_LOCAL_PATH` moves the root here for the tests' launcher emulation only
# (tests/kubeflow/launcher.py); pods do not set it.
LOCAL_ROOT_ENV = 'ARTIFACT_LOCAL_PATH'
LAUNCHER_MIRRORS = (('gs://', 'gcs'), ('minio://', 'minio'), ('s3://', 's3'))
# Schemes this image's TensorFlow can open itself; the others must use the mirror.
GFILE_SCHEMES = ('gs://',)
EXAMPLES_KEY = 'examples'
INPUT_BASE_KEY = 'input_base'
TYPE_SCHEMA = 'title: {}\ntype: object\n'


class EntrypointError(RuntimeError):
  """The executor input cannot be made into something TFX's executor can run."""


def parse_flags(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
  """TFX's entrypoint flags; everything else is a Beam flag, as for TFX."""
  parser = argparse.ArgumentParser(prog='python -m kubeflow.entrypoint')
  parser.add_argument('--executor_class_path', required=True)
  parser.add_argument('--json_serialized_invocation_args', required=True)
  parser.add_argument('--json_serialized_inputs_spec_args', default=None)
  return parser.parse_known_args(list(argv))


# ---------------------------------------------------------------------------
# 1. Artifact types.

def schema_title(type_schema: pipeline_spec_pb2.ArtifactTypeSchema) -> Optional[str]:
  """The type title an ArtifactTypeSchema names, in any of the forms launchers use."""
  kind = type_schema.WhichOneof('kind')
  if kind == 'schema_title':
    return type_schema.schema_title or None
  if kind != 'instance_schema':
    return None
  try:
    data = yaml.safe_load(type_schema.instance_schema)
  except yaml.YAMLError:
    return None
  title = data.get('title') if isinstance(data, dict) else data
  return str(title) if isinstance(title, str) and title else None


def tfx_class_path(title: Optional[str]) -> Optional[str]:
  """The artifact class a title stands for, as TFX resolves it; None if none."""
  if not title:
    return None
  from tfx.orchestration.kubeflow.v2 import compiler_utils
  from tfx.utils import import_utils
  if title in compiler_utils.TITLE_TO_CLASS_PATH:
    return compiler_utils.TITLE_TO_CLASS_PATH[title]
  try:  # custom artifact types are compiled as their import path
    import_utils.import_class_by_path(title)
  except (ImportError, AttributeError, ValueError):
    return None
  return title


def fix_artifact_types(executor_input: pipeline_spec_pb2.ExecutorInput,
                       inputs_spec: Optional[pipeline_spec_pb2.ComponentInputsSpec]) -> None:
  """Gives every artifact an instanceSchema whose title TFX maps to its class."""
  spec_types = ({name: spec.artifact_type for name, spec in inputs_spec.artifacts.items()}
                if inputs_spec is not None else {})
  for direction, artifacts in (('input', executor_input.inputs.artifacts),
                               ('output', executor_input.outputs.artifacts)):
    for name, artifact_list in artifacts.items():
      for artifact in artifact_list.artifacts:
        candidates = ([spec_types[name]] if direction == 'input' and name in spec_types
                      else []) + [artifact.type]
        title = next((t for t in map(schema_title, candidates) if tfx_class_path(t)), None)
        if title is None:
          raise EntrypointError(
              f'{direction} artifact {name!r} ({artifact.uri}): cannot tell its TFX type '
              f'from the launcher ({json_format.MessageToJson(artifact.type, indent=None)}) '
              f'nor from the compiled inputs spec')
        if schema_title(artifact.type) != title:
          logging.info('kubeflow.entrypoint: %s artifact %r: type %s restored (the '
                       'launcher passed %s)', direction, name, title,
                       json_format.MessageToJson(artifact.type, indent=None))
        artifact.type.Clear()
        artifact.type.instance_schema = TYPE_SCHEMA.format(title)


# ---------------------------------------------------------------------------
# 2. Artifact URIs.

def local_mirror(uri: str, root: str = '') -> Optional[str]:
  """The launcher's local path for an object-store URI (KFP's LocalPathForURI)."""
  for scheme, folder in LAUNCHER_MIRRORS:
    if uri.startswith(scheme):
      return f'{root}/{folder}/{uri[len(scheme):]}'
  return None


def localize_uris(executor_input: pipeline_spec_pb2.ExecutorInput,
                  root: str = '') -> Dict[str, str]:
  """Points artifacts at the launcher's mirrors; returns {local path: original URI}.

  Inputs use the mirror the launcher downloaded; outputs the mirror it uploads from
  (it creates their parent folders). gs:// without a mirror stays remote (TensorFlow
  reads it); minio:// and s3:// always go through the mirror.
  """
  remote_by_local: Dict[str, str] = {}
  for direction, artifacts in (('input', executor_input.inputs.artifacts),
                               ('output', executor_input.outputs.artifacts)):
    for name, artifact_list in artifacts.items():
      for artifact in artifact_list.artifacts:
        local = local_mirror(artifact.uri, root)
        if local is None:
          continue
        needs_mirror = not artifact.uri.startswith(GFILE_SCHEMES)
        present = (os.path.exists(local) if direction == 'input'
                   else os.path.isdir(os.path.dirname(local)))
        if not present and not needs_mirror:
          continue
        if not present and direction == 'input':
          raise EntrypointError(
              f'input artifact {name!r} ({artifact.uri}) has no local copy at {local}: '
              f'the Kubeflow Pipelines launcher downloads inputs there before the '
              f'container starts (is this task running under the KFP v2 launcher?)')
        if direction == 'output':
          os.makedirs(os.path.dirname(local), exist_ok=True)
        remote_by_local[local] = artifact.uri
        artifact.uri = local
  if remote_by_local:
    logging.info('kubeflow.entrypoint: artifacts use the launcher\'s local mirrors: %s',
                 ', '.join(f'{r} -> {l}' for l, r in remote_by_local.items()))
  return remote_by_local


def _to_remote(value: str, remote_by_local: Dict[str, str]) -> str:
  for local in sorted(remote_by_local, key=len, reverse=True):
    if value == local or value.startswith(local + '/'):
      return remote_by_local[local] + value[len(local):]
  return value


def restore_uris(output_file: str, remote_by_local: Dict[str, str]) -> None:
  """Rewrites the executor output so that it names the object-store URIs again."""
  if not remote_by_local or not os.path.exists(output_file):
    return
  output = pipeline_spec_pb2.ExecutorOutput()
  with open(output_file, 'r', encoding='utf-8') as f:
    json_format.Parse(f.read(), output, ignore_unknown_fields=True)
  for artifact_list in output.artifacts.values():
    for artifact in artifact_list.artifacts:
      artifact.uri = _to_remote(artifact.uri, remote_by_local)
      for value in artifact.metadata.fields.values():
        if value.WhichOneof('kind') == 'string_value':
          value.string_value = _to_remote(value.string_value, remote_by_local)
  with open(output_file, 'w', encoding='utf-8') as f:
    f.write(json_format.MessageToJson(output))


# ---------------------------------------------------------------------------
# 4. Integer parameters.

def check_integer_parameters(executor_input: pipeline_spec_pb2.ExecutorInput,
                             inputs_spec: Optional[pipeline_spec_pb2.ComponentInputsSpec]
                             ) -> None:
  """Refuses a fractional number for a parameter declared NUMBER_INTEGER."""
  if inputs_spec is None:
    return
  integer = pipeline_spec_pb2.ParameterType.NUMBER_INTEGER
  for name, value in executor_input.inputs.parameter_values.items():
    spec = inputs_spec.parameters.get(name)
    if (spec is not None and spec.parameter_type == integer and
        value.WhichOneof('kind') == 'number_value' and not value.number_value.is_integer()):
      raise EntrypointError(f'parameter {name!r}: expected a whole number, found '
                            f'{value.number_value:g}')


# ---------------------------------------------------------------------------
# 3 and 5. File-based ExampleGen: its driver, and data on object storage.

def _input_base(executor_input: pipeline_spec_pb2.ExecutorInput) -> Optional[str]:
  if INPUT_BASE_KEY in executor_input.inputs.parameter_values:  # schema 2.1
    return executor_input.inputs.parameter_values[INPUT_BASE_KEY].string_value
  if INPUT_BASE_KEY in executor_input.inputs.parameters:  # schema 2.0
    return executor_input.inputs.parameters[INPUT_BASE_KEY].string_value
  return None


def _set_input_base(executor_input: pipeline_spec_pb2.ExecutorInput, value: str) -> None:
  if INPUT_BASE_KEY in executor_input.inputs.parameter_values:
    executor_input.inputs.parameter_values[INPUT_BASE_KEY].string_value = value
  else:
    executor_input.inputs.parameters[INPUT_BASE_KEY].string_value = value


def is_file_based_example_gen(executor_class_path: str,
                              executor_input: pipeline_spec_pb2.ExecutorInput) -> bool:
  from tfx.components.example_gen import base_example_gen_executor
  from tfx.utils import import_utils
  executor_class = import_utils.import_class_by_path(executor_class_path)
  return (issubclass(executor_class, base_example_gen_executor.BaseExampleGenExecutor)
          and _input_base(executor_input) is not None
          and EXAMPLES_KEY in executor_input.outputs.artifacts)


def run_example_gen_driver(executor_input: pipeline_spec_pb2.ExecutorInput,
                           inputs_spec: Optional[pipeline_spec_pb2.ComponentInputsSpec]) -> None:
  """Runs TFX's file-based ExampleGen driver unless a pre-cache hook already did."""
  output_file = executor_input.outputs.output_file
  if os.path.exists(output_file):
    return
  from tfx.orchestration.kubeflow.v2.file_based_example_gen import driver
  driver._run_driver(executor_input, inputs_spec)  # pylint: disable=protected-access
  driver_output = pipeline_spec_pb2.ExecutorOutput()
  with open(output_file, 'r', encoding='utf-8') as f:
    json_format.Parse(f.read(), driver_output, ignore_unknown_fields=True)
  # The driver's span, version and fingerprint are artifact properties, which TFX's
  # entrypoint (unlike the Vertex service) does not carry over from that file.
  computed = driver_output.artifacts[EXAMPLES_KEY].artifacts
  if computed:
    target = executor_input.outputs.artifacts[EXAMPLES_KEY].artifacts[0]
    for key, value in computed[0].metadata.fields.items():
      target.metadata.fields[key].CopyFrom(value)


def stage_input_base(executor_input: pipeline_spec_pb2.ExecutorInput,
                     workdir: str) -> Optional[str]:
  """Copies an object-storage input_base to a local folder; returns that folder."""
  source = _input_base(executor_input)
  if not source or '://' not in source:
    return None
  import tensorflow as tf
  if not tf.io.gfile.isdir(source):
    raise EntrypointError(f'input_base {source}: not a folder (or not readable here)')
  target = os.path.join(workdir, 'input_base')
  copied = []
  for folder, _, files in tf.io.gfile.walk(source):
    relative = os.path.relpath(folder, source) if folder != source else ''
    parts = [p for p in relative.split(os.sep) if p]
    # The base files, and sealed spans (spans/<N>/...); not incoming/ or staging folders.
    if parts and not (parts[0] == data_layout.SPANS_DIR and len(parts) > 1 and
                      parts[1].isdigit()):
      continue
    os.makedirs(os.path.join(target, *parts), exist_ok=True)
    for name in files:
      tf.io.gfile.copy(f'{folder.rstrip("/")}/{name}', os.path.join(target, *parts, name),
                       overwrite=True)
      copied.append('/'.join(parts + [name]))
  logging.info('kubeflow.entrypoint: staged %s from %s to %s', ', '.join(copied) or
               'nothing', source, target)
  _set_input_base(executor_input, target)
  return target


# ---------------------------------------------------------------------------

def run(args: argparse.Namespace, beam_args: List[str]) -> None:
  """Repairs the executor input, runs TFX's executor runner, repairs its output."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor
  logging.set_verbosity(logging.INFO)  # as TFX's entrypoint: pod logs show every step
  executor_input = pipeline_spec_pb2.ExecutorInput()
  json_format.Parse(args.json_serialized_invocation_args, executor_input,
                    ignore_unknown_fields=True)
  inputs_spec = None
  if args.json_serialized_inputs_spec_args:
    inputs_spec = pipeline_spec_pb2.ComponentInputsSpec()
    json_format.Parse(args.json_serialized_inputs_spec_args, inputs_spec,
                      ignore_unknown_fields=True)

  fix_artifact_types(executor_input, inputs_spec)
  check_integer_parameters(executor_input, inputs_spec)
  remote_by_local = localize_uris(executor_input, os.environ.get(LOCAL_ROOT_ENV, ''))
  if is_file_based_example_gen(args.executor_class_path, executor_input):
    run_example_gen_driver(executor_input, inputs_spec)
    stage_input_base(executor_input, tempfile.mkdtemp(prefix='mnist-kfp-'))

  args.json_serialized_invocation_args = json_format.MessageToJson(executor_input)
  kubeflow_v2_run_executor._run_executor(args, beam_args)  # pylint: disable=protected-access
  restore_uris(executor_input.outputs.output_file, remote_by_local)


def main(argv: Optional[Sequence[str]] = None) -> int:
  logs.quiet()  # before the executor imports TensorFlow
  args, beam_args = parse_flags(sys.argv[1:] if argv is None else argv)
  try:
    run(args, beam_args)
  except EntrypointError as e:
    print(f'kubeflow.entrypoint: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
