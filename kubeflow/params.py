"""`--param NAME=VALUE` of `submit` and `schedule`: the run's values of the compiled spec's
pipeline parameters (root.inputDefinitions), checked here against the spec itself.

The API server (backend 2.0.0 and 2.2.0, template/v2_template.go validatePipelineJobInputs)
refuses a name the spec does not declare and a value of the wrong kind (a string for a
number), but accepts 5.5 for an integer parameter and any number for a threshold; the run
would fail in its pod hours later. So the command line parses each value to its declared
type and refuses what the pipeline cannot use, naming the parameter, before any request.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from kubeflow.config import GFILE_SCHEMES
from pipeline.configs import RUNTIME_PARAMETERS

EPOCHS, LEARNING_RATE, ACCURACY_THRESHOLD, DATA_URI = RUNTIME_PARAMETERS
# Bounds of the pipeline's own parameters, beyond their type.
CHECKS: Dict[str, Callable[[Any], Optional[str]]] = {
    EPOCHS: lambda v: None if v >= 1 else 'must be >= 1',
    LEARNING_RATE: lambda v: None if v > 0 else 'must be > 0',
    ACCURACY_THRESHOLD: lambda v: None if 0 <= v <= 1 else 'must be within [0, 1]',
}


class ParamError(ValueError):
  """A --param the compiled spec cannot take."""


def declared(spec_path: str) -> Dict[str, Dict[str, Any]]:
  """The spec's pipeline parameters: name -> its root inputDefinitions entry."""
  spec = next(yaml.safe_load_all(Path(spec_path).read_text()))
  return spec.get('root', {}).get('inputDefinitions', {}).get('parameters', {})


def pvc_mount_paths(spec_path: str) -> List[str]:
  """Where the compiled platform spec mounts PVCs in the pods (any executor)."""
  documents = list(yaml.safe_load_all(Path(spec_path).read_text()))
  executors = (documents[1] if len(documents) > 1 else {}) or {}
  for key in ('platforms', 'kubernetes', 'deploymentSpec', 'executors'):
    executors = executors.get(key, {})
  return sorted({m['mountPath'] for e in executors.values() for m in e.get('pvcMount', [])})


def _parse(name: str, kind: str, text: str) -> Any:
  if kind == 'NUMBER_INTEGER':
    try:
      return int(text)
    except ValueError:
      raise ParamError(f'--param {name}: expected a whole number, found {text!r}') from None
  if kind == 'NUMBER_DOUBLE':
    try:
      value = float(text)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise ParamError(f'--param {name}: expected a number, found {text!r}')
    return value
  if kind == 'BOOLEAN':
    if text.lower() not in ('true', 'false'):
      raise ParamError(f'--param {name}: expected true or false, found {text!r}')
    return text.lower() == 'true'
  if kind == 'STRING':
    return text
  raise ParamError(f'--param {name}: the spec declares type {kind}, which --param cannot set')


def check_data_uri(value: str, mounts: Sequence[str]) -> None:
  """The data a pod can read: gs:// (its TensorFlow opens it) or a mounted PVC path."""
  if value.startswith(GFILE_SCHEMES):
    return
  if value.startswith('/') and any(value == m or value.startswith(m.rstrip('/') + '/')
                                   for m in mounts):
    return
  raise ParamError(f'--param data_uri: {value!r} cannot be read in the pods: use a gs:// URI '
                   f'or a path on a PVC the spec mounts ({", ".join(mounts) or "none"}; '
                   f'mounts change with a recompile)')


def parse_params(spec_path: str, assignments: Sequence[str]) -> Dict[str, Any]:
  """{name: typed value} of `NAME=VALUE` strings, as the spec at `spec_path` declares."""
  if not assignments:
    return {}
  known = declared(spec_path)
  names = ', '.join(sorted(known)) or 'none: recompile with `python -m kubeflow compile`'
  result: Dict[str, Any] = {}
  for assignment in assignments:
    name, equals, text = assignment.partition('=')
    name = name.strip()
    if not equals or not name:
      raise ParamError(f'--param: expected NAME=VALUE, found {assignment!r}')
    if name not in known:
      raise ParamError(f'--param {name}: not a parameter of {spec_path} (its parameters: '
                       f'{names})')
    if name in result:
      raise ParamError(f'--param {name}: given twice')
    value = _parse(name, known[name].get('parameterType', ''), text)
    problem = CHECKS[name](value) if name in CHECKS else None
    if problem:
      raise ParamError(f'--param {name}: {problem}, found {text!r}')
    if name == DATA_URI:
      check_data_uri(value, pvc_mount_paths(spec_path))
    result[name] = value
  return result
