"""Runs a compiled spec's whole DAG the way open-source Kubeflow Pipelines 2.2 runs it.

Followed from the backend's source at tag 2.2.0 (same logic at 2.0.5):

* API server and Argo compiler (`apiserver/template/v2_template.go`,
  `compiler/argocompiler/argo.go`): the run's parameters are checked against the root's
  `inputDefinitions` (a required one without default is refused, types are checked) and
  the root's defaults fill the missing ones; tasks run in the order of `dependentTasks`
  plus the producers of their `taskOutputArtifact`/`taskOutputParameter` inputs
  (`addImplicitDependencies`), each only after all of those succeeded.
* Driver (`driver/driver.go`, `resolveInputs`, `provisionOutputs`): a task's parameters
  are `runtimeValue.constant`s or `componentInputParameter`s read from the root's
  parameters; then checked against the component's input types (a STRING one given
  another type becomes its text). An input artifact is the producer's output as ML Metadata
  gives it back (`metadata/converter.go`): the MLMD id as name, the artifact's custom
  properties as metadata (numbers as doubles, booleans as 0/1, lists and structs wrapped
  in `{"list": ...}`/`{"struct": ...}`, `display_name` added) and an empty
  `instanceSchema` (`GetOutputArtifactsByExecutionId` keeps no schema). Outputs are
  `<pipeline root>/<pipeline name>/<run id>/<task>/<output>`, typed from the component's
  `outputDefinitions`. A `triggerPolicy.condition` (CEL) is not evaluated here: such a
  spec is refused rather than run differently from a cluster.
* Launcher (`component/launcher_v2.go`, `objectstore/object_store.go`): component input
  defaults fill the placeholders; each input artifact is downloaded from object storage
  to its local path (`/minio/<bucket>/<key>`, `/gcs/...`, `/s3/...`) by listing the
  bucket for the key as a prefix (so `.../model` also brings `.../model_run`, next to it)
  and copying files only; the parent folder of each output's local path is created; the
  command runs with `{{$}}` replaced; the executor output file is read (absent: empty),
  each output artifact's URI and metadata merged from it, and its local path uploaded,
  files only (empty folders vanish), when the merged URI is an object-store one.

Here object storage is a folder (`<bucket root>/<bucket>/<key>`), each task gets its own
pod folder (its local mirrors under ARTIFACT_LOCAL_PATH, which kubeflow.entrypoint reads
instead of `/`: the real launcher has no such setting and always uses `/minio` etc.; its
`/tmp`), and a PVC is a folder every pod sees at the same path. Tasks run the spec's own
command and args with the image's environment and working directory (tests/kubeflow/
image.py), using this interpreter for the image's `python`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.kubeflow import image

# launcher_v2.go localPathForURI: the local mirror folder of each scheme.
MIRRORS = (('gs://', 'gcs'), ('minio://', 'minio'), ('s3://', 's3'))
OUTPUT_METADATA = 'tmp/kfp_outputs/output_metadata.json'  # OutputMetadataFilepath, in the pod
TASK_TIMEOUT = 600


class LauncherError(RuntimeError):
  """What the backend would refuse or fail on (driver, launcher or API server)."""


def split_uri(uri: str) -> Optional[Tuple[str, str, str]]:
  """(scheme folder, bucket, key) of an object-store URI the launcher mirrors, else None."""
  for scheme, folder in MIRRORS:
    if uri.startswith(scheme):
      bucket, _, key = uri[len(scheme):].partition('/')
      return folder, bucket, key
  return None


def local_path_for_uri(uri: str, pod_root: Path) -> Optional[Path]:
  """launcher_v2.go localPathForURI, under the pod's root instead of `/`."""
  parts = split_uri(uri)
  return pod_root.joinpath(parts[0], parts[1], parts[2]) if parts else None


class Bucket:
  """Object storage: `<root>/<bucket>/<key>` per object; folders are only key prefixes."""

  def __init__(self, root: Path) -> None:
    self.root = root

  def path(self, uri: str) -> Path:
    parts = split_uri(uri)
    if parts is None:
      raise LauncherError(f'{uri}: not an object-store URI')
    return self.root.joinpath(parts[1], parts[2])

  def keys(self, uri: str) -> List[str]:
    """Keys of the objects whose key starts with the URI's key (a string prefix)."""
    _, bucket, prefix = split_uri(uri) or ('', '', '')
    base = self.root / bucket
    start = base / os.path.dirname(prefix)
    if not start.is_dir():
      return []
    found = (str(p.relative_to(base)) for p in start.rglob('*') if p.is_file())
    return sorted(key for key in found if key.startswith(prefix))

  def download(self, uri: str, local: Path) -> int:
    """object_store.go DownloadBlob: every object under the prefix, by relative key."""
    _, bucket, prefix = split_uri(uri) or ('', '', '')
    keys = self.keys(uri)
    for key in keys:
      target = Path(os.path.normpath(local / os.path.relpath(key, prefix)))
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(self.root / bucket / key, target)
    return len(keys)

  def upload(self, local: Path, uri: str) -> int:
    """object_store.go UploadBlob: the files of a local file or folder, under the key."""
    if not local.exists():
      return 0  # "We allow components to not produce output files"
    files = [local] if local.is_file() else sorted(p for p in local.rglob('*') if p.is_file())
    for path in files:
      target = self.path(uri) / path.relative_to(local) if path != local else self.path(uri)
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(path, target)
    return len(files)


# ---------------------------------------------------------------------------
# ML Metadata as the launcher writes it and the driver reads it back (converter.go).

def to_mlmd_value(value: Any) -> Tuple[str, Any]:
  """StructValueToMLMDValue: (MLMD value kind, value)."""
  if isinstance(value, bool):
    return 'int', int(value)
  if isinstance(value, str):
    return 'string', value
  if isinstance(value, (int, float)):
    return 'double', float(value)
  if isinstance(value, list):
    return 'struct', {'list': value}
  if isinstance(value, dict):
    return 'struct', {'struct': value}
  raise LauncherError(f'unsupported metadata value {value!r} (null is not supported)')


def from_mlmd_value(kind: str, value: Any) -> Any:
  """toRuntimeArtifact's propertiesToMetadata: ints and doubles both come back numbers."""
  return float(value) if kind in ('int', 'double') else value


class Mlmd:
  """The artifacts each task's launcher recorded, as the next tasks' drivers read them."""

  def __init__(self) -> None:
    self.artifacts: Dict[int, Dict[str, Any]] = {}
    self.outputs: Dict[str, Dict[str, int]] = {}
    self.lock = threading.Lock()  # tasks of a run record from several threads

  def record(self, task: str, name: str, artifact: Dict[str, Any]) -> int:
    """RecordArtifact: the metadata become custom properties, display_name by default."""
    properties = {key: to_mlmd_value(value)
                  for key, value in artifact.get('metadata', {}).items()}
    properties.setdefault('display_name', ('string', name))
    with self.lock:
      artifact_id = len(self.artifacts) + 1
      self.artifacts[artifact_id] = {
          'uri': artifact['uri'], 'custom_properties': properties,
          'schema': artifact.get('type', {}).get('instanceSchema', '')}
      self.outputs.setdefault(task, {})[name] = artifact_id
    return artifact_id

  def runtime_artifact(self, artifact_id: int) -> Dict[str, Any]:
    """What the driver passes downstream: no schema kept (see the module doc)."""
    stored = self.artifacts[artifact_id]
    return {'name': str(artifact_id), 'uri': stored['uri'], 'type': {'instanceSchema': ''},
            'metadata': {key: from_mlmd_value(kind, value)
                         for key, (kind, value) in stored['custom_properties'].items()}}

  def output(self, task: str, name: str) -> Dict[str, Any]:
    """The artifact of a task's output, as the driver resolves it."""
    return self.runtime_artifact(self.outputs[task][name])


# ---------------------------------------------------------------------------

def parameter_text(value: Any) -> str:
  """metadata.PbValueToText: a parameter value as text (STRING inputs given numbers...)."""
  if value is None:
    return ''
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (int, float)):  # strconv.FormatFloat(v, 'f', -1, 64)
    return np.format_float_positional(float(value), trim='-')
  return json.dumps(value, separators=(',', ':'))


TYPE_CHECKS = {
    'STRING': lambda v: isinstance(v, str),
    'NUMBER_DOUBLE': lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    'NUMBER_INTEGER': lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    'BOOLEAN': lambda v: isinstance(v, bool),
    'LIST': lambda v: isinstance(v, list),
    'STRUCT': lambda v: isinstance(v, dict),
}


@dataclasses.dataclass
class TaskRun:
  """One task's pod: what it was given, what it reported, its log, its time."""
  name: str
  pod: Path
  executor_input: Dict[str, Any]
  args: List[str]
  returncode: int
  log: str
  started: float    # time.monotonic() at the start and the end of the container
  ended: float
  executor_output: Dict[str, Any] = dataclasses.field(default_factory=dict)
  downloaded: Dict[str, int] = dataclasses.field(default_factory=dict)
  uploaded: Dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def seconds(self) -> float:
    return self.ended - self.started

  def tail(self, lines: int = 40) -> str:
    return '\n'.join(self.log.splitlines()[-lines:])


class KfpRun:
  """One run of a compiled spec: its root parameters, its bucket, its MLMD, its pods."""

  def __init__(self, spec: Dict[str, Any], workdir: Path, pipeline_root: str,
               runtime_config: Optional[Dict[str, Any]] = None, run_id: str = 'run-1') -> None:
    self.spec = spec
    self.workdir = workdir
    self.bucket = Bucket(workdir / 'bucket')
    self.pipeline_root = pipeline_root  # the run's runtime_config.pipeline_root
    self.run_id = run_id
    self.mlmd = Mlmd()
    self.parameters = self.root_parameters(runtime_config or {})
    self.runs: Dict[str, TaskRun] = {}
    self.stopped = threading.Event()  # set: no new task starts (the session is over)

  def stop(self) -> None:
    self.stopped.set()

  @property
  def tasks(self) -> Dict[str, Any]:
    return self.spec['root']['dag']['tasks']

  def component(self, task: str) -> Dict[str, Any]:
    return self.spec['components'][self.tasks[task]['componentRef']['name']]

  def container(self, task: str) -> Dict[str, Any]:
    label = self.component(task)['executorLabel']
    return self.spec['deploymentSpec']['executors'][label]['container']

  def root_parameters(self, runtime_config: Dict[str, Any]) -> Dict[str, Any]:
    """The API server's check of the run's parameters, then the root's defaults."""
    definitions = self.spec['root'].get('inputDefinitions', {}).get('parameters', {})
    unknown = set(runtime_config) - set(definitions)
    if unknown:
      raise LauncherError(f'runtime config: no such pipeline parameters {sorted(unknown)}')
    values = dict(runtime_config)
    for name, definition in definitions.items():
      if name in values:
        kind = definition.get('parameterType', 'STRING')
        if not TYPE_CHECKS[kind](values[name]):
          raise LauncherError(f'input parameter {name} requires type {kind}, got '
                              f'{values[name]!r}')
      elif 'defaultValue' in definition:
        values[name] = definition['defaultValue']
      elif not definition.get('isOptional'):
        raise LauncherError(f'parameter {name} is not optional, yet has neither default '
                            f'value nor user provided value')
    return values

  def upstream(self, task: str) -> List[str]:
    """dependentTasks plus the producers of its inputs (addImplicitDependencies)."""
    spec = self.tasks[task]
    producers = [p['taskOutputArtifact']['producerTask']
                 for p in spec.get('inputs', {}).get('artifacts', {}).values()
                 if 'taskOutputArtifact' in p]
    producers += [p['taskOutputParameter']['producerTask']
                  for p in spec.get('inputs', {}).get('parameters', {}).values()
                  if 'taskOutputParameter' in p]
    upstream = list(dict.fromkeys(spec.get('dependentTasks', []) + producers))
    unknown = [name for name in upstream if name not in self.tasks]
    if unknown:
      raise LauncherError(f'{task}: unknown producer task(s) {unknown} in DAG')
    return upstream

  def order(self) -> List[str]:
    """A topological order of the DAG (ties by name, for a reproducible run)."""
    done: List[str] = []
    pending = sorted(self.tasks)
    while pending:
      ready = [t for t in pending if all(u in done for u in self.upstream(t))]
      if not ready:
        raise LauncherError(f'the DAG has a cycle among {pending}')
      done.append(ready[0])
      pending.remove(ready[0])
    return done

  # --- driver ---------------------------------------------------------------

  def resolve_inputs(self, task: str) -> Dict[str, Any]:
    """driver.go resolveInputs for a task of the root DAG."""
    spec = self.tasks[task].get('inputs', {})
    parameters: Dict[str, Any] = {}
    for name, source in spec.get('parameters', {}).items():
      if 'componentInputParameter' in source:
        key = source['componentInputParameter']
        if key not in self.parameters:
          raise LauncherError(f'{task}: parent DAG does not have input parameter {key}')
        parameters[name] = self.parameters[key]
      elif 'constant' in source.get('runtimeValue', {}):
        parameters[name] = source['runtimeValue']['constant']
      else:
        raise LauncherError(f'{task}: parameter {name}: spec {source} not implemented here')
      if 'parameterExpressionSelector' in source:
        raise LauncherError(f'{task}: parameter {name}: expression selectors not emulated')
    artifacts: Dict[str, Any] = {}
    for name, source in spec.get('artifacts', {}).items():
      if 'taskOutputArtifact' not in source:
        raise LauncherError(f'{task}: artifact {name}: spec {source} not implemented here')
      producer = source['taskOutputArtifact']['producerTask']
      key = source['taskOutputArtifact']['outputArtifactKey']
      if key not in self.mlmd.outputs.get(producer, {}):
        raise LauncherError(f'{task}: cannot find output artifact key {key!r} in producer '
                            f'task {producer!r}')
      artifacts[name] = {'artifacts': [self.mlmd.output(producer, key)]}
    definitions = self.component(task).get('inputDefinitions', {}).get('parameters', {})
    for name, definition in definitions.items():
      if name not in parameters:
        if not definition.get('isOptional') and 'defaultValue' not in definition:
          raise LauncherError(f'{task}: neither value nor default value provided for '
                              f'non-optional parameter {name}')
        continue
      kind = definition.get('parameterType', 'STRING')
      if kind == 'STRING':
        parameters[name] = parameter_text(parameters[name])
      elif not TYPE_CHECKS[kind](parameters[name]):
        raise LauncherError(f'{task}: input parameter {name} type mismatch: expect {kind}, '
                            f'got {parameters[name]!r}')
    return {'parameterValues': parameters, 'artifacts': artifacts}

  def output_uri(self, task: str, name: str) -> str:
    """metadata.GenerateOutputURI(<root>/<pipeline>/<run id>, [task, output])."""
    run_root = f'{self.pipeline_root.rstrip("/")}/{self.spec["pipelineInfo"]["name"]}/{self.run_id}'
    return f'{run_root}/{task}/{name}'

  def provision_outputs(self, task: str, pod: Path) -> Dict[str, Any]:
    """driver.go provisionOutputs, with the pod's output metadata path."""
    definitions = self.component(task).get('outputDefinitions', {})
    artifacts = {
        name: {'artifacts': [{'uri': self.output_uri(task, name),
                              'type': definition['artifactType'],
                              'metadata': definition.get('metadata', {})}]}
        for name, definition in definitions.get('artifacts', {}).items()}
    parameters = {name: {'outputFile': str(pod / 'tmp/kfp/outputs' / name)}
                  for name in definitions.get('parameters', {})}
    return {'artifacts': artifacts, 'parameters': parameters,
            'outputFile': str(pod / OUTPUT_METADATA)}

  # --- launcher -------------------------------------------------------------

  def executor_input(self, task: str, pod: Path) -> Dict[str, Any]:
    """The driver's ExecutorInput, checked against the proto (field names, value types)."""
    trigger = self.tasks[task].get('triggerPolicy', {})
    if trigger.get('condition'):
      raise LauncherError(f'{task}: triggerPolicy.condition {trigger["condition"]!r}: '
                          f'CEL conditions are not emulated')
    executor_input = {'inputs': self.resolve_inputs(task),
                      'outputs': self.provision_outputs(task, pod)}
    json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput())
    return executor_input

  def placeholders(self, task: str, executor_input: Dict[str, Any],
                   mirror: Path) -> Dict[str, str]:
    """getPlaceholders of the input with the component's parameter defaults added."""
    with_defaults = json.loads(json.dumps(executor_input))
    values = with_defaults['inputs']['parameterValues']
    for name, definition in (self.component(task).get('inputDefinitions', {})
                             .get('parameters', {}).items()):
      if name not in values and 'defaultValue' in definition:
        values[name] = definition['defaultValue']
    message = json_format.ParseDict(with_defaults, pipeline_spec_pb2.ExecutorInput())
    result = {'{{$}}': json_format.MessageToJson(message, indent=None)}
    for name, value in values.items():
      result[f"{{{{$.inputs.parameters['{name}']}}}}"] = parameter_text(value)
    for direction in ('inputs', 'outputs'):
      for name, listed in with_defaults[direction]['artifacts'].items():
        uri = listed['artifacts'][0]['uri']
        result[f"{{{{$.{direction}.artifacts['{name}'].uri}}}}"] = uri
        if local_path_for_uri(uri, mirror):
          result[f"{{{{$.{direction}.artifacts['{name}'].path}}}}"] = str(
              local_path_for_uri(uri, mirror))
    for name, parameter in with_defaults['outputs']['parameters'].items():
      result[f"{{{{$.outputs.parameters['{name}'].output_file}}}}"] = parameter['outputFile']
    return result

  def prepare(self, task: str, pod: Path) -> Tuple[Dict[str, Any], List[str], Dict[str, int]]:
    """Driver, then the launcher up to the command: the executor input, inputs downloaded
    into the pod's mirror, output folders made; returns the input, the container's args
    with placeholders filled, and the files downloaded per input."""
    mirror = pod / 'mirror'
    executor_input = self.executor_input(task, pod)
    downloaded = {}
    for name, listed in executor_input['inputs']['artifacts'].items():
      uri = listed['artifacts'][0]['uri']
      local = local_path_for_uri(uri, mirror)
      if local is not None:
        downloaded[name] = self.bucket.download(uri, local)
    for listed in executor_input['outputs']['artifacts'].values():
      local = local_path_for_uri(listed['artifacts'][0]['uri'], mirror)
      if local is None:
        raise LauncherError(f'{task}: output {listed} has no local path')
      local.parent.mkdir(parents=True, exist_ok=True)
    for name, parameter in executor_input['outputs']['parameters'].items():
      Path(parameter['outputFile']).parent.mkdir(parents=True, exist_ok=True)
    Path(executor_input['outputs']['outputFile']).parent.mkdir(parents=True, exist_ok=True)

    container = self.container(task)
    placeholders = self.placeholders(task, executor_input, mirror)
    args = []
    for arg in container['args']:
      for placeholder, value in placeholders.items():
        arg = arg.replace(placeholder, value)
      args.append(arg)
    return executor_input, args, downloaded

  def run_task(self, task: str) -> TaskRun:
    """Driver, then launcher: download, run the container command, upload, record."""
    pod = self.workdir / 'pods' / task
    mirror = pod / 'mirror'
    executor_input, args, downloaded = self.prepare(task, pod)
    container = self.container(task)
    command = list(container['command'])
    if command[0] != 'python':
      raise LauncherError(f'{task}: command {command}: the image runs `python ...`')
    started = time.monotonic()
    result = subprocess.run([sys.executable, *command[1:], *args], cwd=image.workdir_here(),
                            env=image.pod_environment(pod, mirror), capture_output=True,
                            text=True, timeout=TASK_TIMEOUT, check=False)
    run = TaskRun(task, pod, executor_input, args, result.returncode,
                  result.stdout + result.stderr, started, time.monotonic(),
                  downloaded=downloaded)
    (pod / 'log.txt').write_text(run.log)  # to read after a failure
    self.runs[task] = run
    if result.returncode == 0:
      self.finish(task, run)
    return run

  def finish(self, task: str, run: TaskRun) -> None:
    """getExecutorOutputFile, output parameters, uploadOutputArtifacts, RecordArtifact."""
    output_file = Path(run.executor_input['outputs']['outputFile'])
    output = json.loads(output_file.read_text()) if output_file.exists() else {}
    json_format.ParseDict(output, pipeline_spec_pb2.ExecutorOutput())  # protojson.Unmarshal
    run.executor_output = output
    for name, parameter in run.executor_input['outputs']['parameters'].items():
      if name not in output.get('parameterValues', {}):
        Path(parameter['outputFile']).read_text()  # the launcher fails on a missing file
    for name, listed in run.executor_input['outputs']['artifacts'].items():
      artifact = dict(listed['artifacts'][0])
      reported = output.get('artifacts', {}).get(name, {}).get('artifacts', [])
      if reported:
        if reported[0].get('uri'):
          artifact['uri'] = reported[0]['uri']
        artifact['metadata'] = {**artifact.get('metadata', {}),
                                **reported[0].get('metadata', {})}
      local = local_path_for_uri(artifact['uri'], run.pod / 'mirror')
      if local is not None:
        run.uploaded[name] = self.bucket.upload(local, artifact['uri'])
      self.mlmd.record(task, name, artifact)

  def run_all(self, parallel: int = 2) -> List[str]:
    """Every task, each as soon as all its upstream tasks succeeded (Argo's enhanced
    `depends`: `<upstream>.Succeeded`), up to `parallel` at a time. After a failure
    nothing new starts. Returns the tasks in the order they started."""
    started: List[str] = []
    succeeded: set = set()
    failed = False
    with futures.ThreadPoolExecutor(parallel) as pool:
      running: Dict[futures.Future, str] = {}
      while True:
        if not failed and not self.stopped.is_set():
          for task in self.order():
            if (task not in started and len(running) < parallel and
                all(u in succeeded for u in self.upstream(task))):
              started.append(task)
              running[pool.submit(self.run_task, task)] = task
        if not running:
          return started
        done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
        for future in done:
          task = running.pop(future)
          if future.result().returncode == 0:
            succeeded.add(task)
          else:
            failed = True
