"""Runs one compiled task the way the open-source Kubeflow Pipelines v2 launcher does.

The launcher builds the ExecutorInput JSON, substitutes it for `{{$}}` in the args the
spec gives, runs the spec's command, and moves artifacts between object storage and local
mirrors (`/minio/<bucket>/...`) around it. Here the mirrors live under a test folder,
named through ARTIFACT_LOCAL_PATH as the launcher itself allows, and "object storage" is
the mirror itself: outputs are read back from it, inputs are already in it.

Its artifact types are what that launcher sends: output types copied from the component's
outputDefinitions (instanceSchema YAML), and for inputs read back from ML Metadata, an
empty instanceSchema (the driver's MLMD lookup keeps no schema) with the MLMD id as name
and the artifact's properties as metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pipeline.configs import REPO_ROOT

MIRRORS = (('gs://', 'gcs'), ('minio://', 'minio'), ('s3://', 's3'))


class Launcher:

  def __init__(self, spec: Dict[str, Any], workdir: Path, run_id: str = 'run-1') -> None:
    self.spec = spec
    self.workdir = workdir
    self.mirror = workdir / 'mirror'
    self.run_id = run_id

  def local(self, uri: str) -> Path:
    for scheme, folder in MIRRORS:
      if uri.startswith(scheme):
        return self.mirror / folder / uri[len(scheme):]
    raise ValueError(uri)

  def output_uri(self, task: str, name: str) -> str:
    root = self.spec['defaultPipelineRoot'].rstrip('/')
    return f'{root}/{self.spec["pipelineInfo"]["name"]}/{self.run_id}/{task}/{name}'

  def component(self, task: str) -> Dict[str, Any]:
    return self.spec['components'][self.spec['root']['dag']['tasks'][task]['componentRef']['name']]

  def container(self, task: str) -> Dict[str, Any]:
    label = self.component(task)['executorLabel']
    return self.spec['deploymentSpec']['executors'][label]['container']

  def output_file(self, task: str) -> Path:
    return self.workdir / task / 'kfp_outputs' / 'output_metadata.json'

  def executor_input(self, task: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
    parameters = {name: value['runtimeValue']['constant'] for name, value in
                  self.spec['root']['dag']['tasks'][task]['inputs'].get('parameters', {}).items()}
    outputs = {}
    for name, definition in self.component(task)['outputDefinitions']['artifacts'].items():
      uri = self.output_uri(task, name)
      self.local(uri).parent.mkdir(parents=True, exist_ok=True)  # prepareOutputFolders
      outputs[name] = {'artifacts': [{'uri': uri, 'type': definition['artifactType'],
                                      'metadata': {}}]}
    return {'inputs': {'parameterValues': parameters, 'artifacts': inputs},
            'outputs': {'artifacts': outputs, 'outputFile': str(self.output_file(task))}}

  def args(self, task: str, inputs: Optional[Dict[str, Any]] = None) -> List[str]:
    """The container's args with `{{$}}` replaced by the executor input JSON."""
    executor_input = json.dumps(self.executor_input(task, inputs or {}))
    return [arg.replace('{{$}}', executor_input) for arg in self.container(task)['args']]

  def run(self, task: str, inputs: Optional[Dict[str, Any]] = None,
          command: Optional[Sequence[str]] = None) -> subprocess.CompletedProcess:
    """Runs the task's container command locally, as its pod would."""
    args = self.args(task, inputs)
    command = list(command or self.container(task)['command'])
    assert command[0] == 'python', command  # the image's venv python is this one here
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ARTIFACT_LOCAL_PATH=str(self.mirror))
    self.output_file(task).parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, *command[1:], *args], env=env, cwd=self.workdir,
                          capture_output=True, text=True, timeout=300, check=False)

  def executor_output(self, task: str) -> Dict[str, Any]:
    return json.loads(self.output_file(task).read_text())

  @staticmethod
  def as_input(executor_output: Dict[str, Any], key: str, mlmd_id: int) -> Dict[str, Any]:
    """An upstream output as the driver hands it to the next task (see module doc)."""
    artifact = executor_output['artifacts'][key]['artifacts'][0]
    return {'artifacts': [{'name': str(mlmd_id), 'uri': artifact['uri'],
                           'type': {'instanceSchema': ''},
                           'metadata': {**artifact['metadata'], 'display_name': key}}]}


def tail(result: subprocess.CompletedProcess, lines: int = 40) -> str:
  text: List[str] = (result.stdout + result.stderr).splitlines()
  return '\n'.join(text[-lines:])
