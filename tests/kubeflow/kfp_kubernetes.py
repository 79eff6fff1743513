"""The Kubernetes executor config as each KFP backend generation's driver parses it.

The driver of backends 2.0-2.4 reads an executor's Kubernetes config with jsonpb and no
AllowUnknownFields: a field its kfp-kubernetes proto lacks fails the task at launch. The
tests parse the same way, ParseDict without ignore_unknown_fields, with the proto of the
kfp-kubernetes release that matches each generation (scripts/setup.sh installs each into
<venv>/kfp-kubernetes/<version>). Both releases define the same proto file, which one
process's descriptor pool cannot hold twice, so each parses in its own subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

# Backend generation -> the kfp-kubernetes release with the same KubernetesExecutorConfig:
# backend 2.0.x pins kubernetes_platform at bd9f74e (go.mod), the proto of 1.0.0; backend
# 2.2.0 pins 8b2a099, the proto of 1.2.0 (fields 1-15). 2.4.1 pins d911c8b (1.3.0's proto,
# a superset) and parses without strictness; 1.2.0's proto checks it conservatively.
RELEASES = {'2.0': '1.0.0', '2.2': '1.2.0', '2.4.1': '1.2.0'}

_PARSE = '''
import importlib.util, json, sys
from google.protobuf import json_format
spec = importlib.util.spec_from_file_location('kubernetes_executor_config_pb2', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
errors = {}
for label, config in json.load(sys.stdin).items():
  try:
    json_format.ParseDict(config, module.KubernetesExecutorConfig())
  except json_format.ParseError as e:
    errors[label] = str(e)
fields = [f.json_name for f in module.KubernetesExecutorConfig.DESCRIPTOR.fields]
print(json.dumps({'fields': fields, 'errors': errors}))
'''


def proto_module(release: str) -> Path:
  """The release's generated module, loaded by path: the installed kfp package would
  shadow its `kfp` namespace folder."""
  path = (Path(sys.prefix) / 'kfp-kubernetes' / release / 'kfp' / 'kubernetes' /
          'kubernetes_executor_config_pb2.py')
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: run scripts/setup.sh (it installs '
                            f'kfp-kubernetes {release} there)')
  return path


def parse_strictly(generation: str,
                   executors: Dict[str, Any]) -> Tuple[List[str], Dict[str, str]]:
  """(the proto's field names, {executor: parse error}) for the generation's proto."""
  result = subprocess.run(
      [sys.executable, '-c', _PARSE, str(proto_module(RELEASES[generation]))],
      input=json.dumps(executors), capture_output=True, text=True, timeout=120, check=True)
  answer = json.loads(result.stdout)
  return answer['fields'], answer['errors']
