"""A loopback stand-in for the Kubeflow Pipelines API server that records requests.

It answers the KFP v2beta1 REST calls `kfp.Client` makes for submit/schedule/list/delete,
with bodies built from kfp_server_api's own models (so the client parses them as it would
the real server's), and can be told to fail a route with a status and message. It refuses
a run or recurring run without `runtime_config.pipeline_root`: the real server accepts it,
but then the driver ignores the spec's root and writes to the namespace default. Like
the real server (backend 2.0.0 and 2.2.0, template/v2_template.go
validatePipelineJobInputs), it refuses runtime parameters the spec's root does not
declare, a required one left out, and values of the wrong kind.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import kfp_server_api

API = '/apis/v2beta1'


@dataclasses.dataclass
class Request:
  method: str
  path: str
  query: Dict[str, List[str]]
  body: Any
  headers: Dict[str, str]  # lower-case names


NUMBER_TYPES = ('NUMBER_DOUBLE', 'NUMBER_INTEGER')


def parameter_problem(body: Dict[str, Any]) -> Optional[str]:
  """What validatePipelineJobInputs says of the run's runtime parameters, if anything."""
  spec = (body.get('pipeline_spec') or {}).get('pipeline_spec')
  if spec is None:  # a run of an uploaded pipeline version: the server has the spec
    return None
  declared = spec.get('root', {}).get('inputDefinitions', {}).get('parameters', {})
  given = (body.get('runtime_config') or {}).get('parameters') or {}
  for name, definition in declared.items():
    if name not in given:
      if not definition.get('isOptional') and 'defaultValue' not in definition:
        return (f'parameter {name} is not optional, yet has neither default value nor '
                f'user provided value')
      continue
    kind, value = definition.get('parameterType'), given[name]
    if kind in NUMBER_TYPES and (isinstance(value, bool) or
                                 not isinstance(value, (int, float))):
      return (f'input parameter {name} requires type double or integer, but the parameter '
              f'value is not of number value type')
    if kind == 'STRING' and not isinstance(value, str):
      return (f'input parameter {name} requires type string, but the input parameter is '
              f'not of string value type')
  extra = sorted(set(given) - set(declared))
  if extra:
    return f'parameter(s) provided are not required by pipeline: {", ".join(extra)}'
  return None


def _json(model) -> Any:
  return kfp_server_api.ApiClient().sanitize_for_serialization(model)


class FakeKfp:
  """Starts on 127.0.0.1 at a free port; `host` is the URL to give kfp.Client."""

  def __init__(self) -> None:
    self.requests: List[Request] = []
    self.failures: Dict[Tuple[str, str], Tuple[int, str]] = {}
    self.experiments: List[Any] = []
    self.recurring_runs: List[Any] = []
    self.runs: List[Dict[str, Any]] = []
    # run id -> the states its next GETs report, one per GET; the last one stays.
    self.progress: Dict[str, List[str]] = {}
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args) -> None:  # keep test output clean
        pass

      def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length) if length else b''
        body = json.loads(raw) if raw else None
        query = urllib.parse.parse_qs(url.query)
        fake.requests.append(Request(method, url.path, query, body,
                                     {k.lower(): v for k, v in self.headers.items()}))
        status, payload = fake.answer(method, url.path, body, query)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def do_GET(self) -> None:  # pylint: disable=invalid-name
        self._handle('GET')

      def do_POST(self) -> None:  # pylint: disable=invalid-name
        self._handle('POST')

      def do_DELETE(self) -> None:  # pylint: disable=invalid-name
        self._handle('DELETE')

    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                    daemon=True)
    self._thread.start()
    self.host = f'http://127.0.0.1:{self._server.server_address[1]}'

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()

  def fail(self, method: str, path: str, status: int, message: str) -> None:
    self.failures[(method, API + path)] = (status, message)

  def calls(self, method: Optional[str] = None, path: Optional[str] = None) -> List[Request]:
    return [r for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == API + path)]

  def answer(self, method: str, path: str, body: Any,
             query: Dict[str, List[str]]) -> Tuple[int, Any]:
    if (method, path) in self.failures:
      status, message = self.failures[(method, path)]
      return status, {'error': message, 'code': 3, 'message': message}
    route = path[len(API):] if path.startswith(API) else path
    if method == 'POST' and route in ('/runs', '/recurringruns') and not (
        (body.get('runtime_config') or {}).get('pipeline_root')):
      return 400, {'error': 'no runtime_config.pipeline_root', 'code': 3,
                   'message': 'no runtime_config.pipeline_root: the driver would use the '
                              "namespace's kfp-launcher ConfigMap, not the spec's root"}
    problem = (parameter_problem(body) if method == 'POST' and
               route in ('/runs', '/recurringruns') else None)
    if problem:
      message = f'invalid pipeline job inputs: {problem}'
      return 400, {'error': message, 'code': 3, 'message': message}
    if (method, route) == ('GET', '/healthz'):
      return 200, _json(kfp_server_api.V2beta1GetHealthzResponse(multi_user=False))
    if (method, route) == ('GET', '/experiments'):
      return 200, _json(kfp_server_api.V2beta1ListExperimentsResponse(
          experiments=self.experiments or None, total_size=len(self.experiments)))
    if (method, route) == ('POST', '/experiments'):
      experiment = kfp_server_api.V2beta1Experiment(
          experiment_id=f'exp-{len(self.experiments) + 1}',
          display_name=body['display_name'])
      self.experiments.append(experiment)
      return 200, _json(experiment)
    if (method, route) == ('POST', '/runs'):
      run = {**body, 'run_id': f'run-{len(self.runs) + 1}', 'state': 'PENDING',
             'created_at': f'2025-01-01T03:00:{len(self.runs):02d}Z'}
      self.runs.append(run)
      return 200, run
    if (method, route) == ('GET', '/runs'):
      runs = [r for r in self.runs if r.get('experiment_id') in query.get('experiment_id', [])]
      runs.sort(key=lambda r: r['created_at'], reverse=True)
      size = int(query.get('page_size', ['10'])[0])
      return 200, {'runs': runs[:size], 'total_size': len(runs)}
    if method == 'GET' and route.startswith('/runs/'):
      run_id = route.rsplit('/', 1)[1]
      run = next((r for r in self.runs if r['run_id'] == run_id), None)
      if run is None:
        return 404, {'error': f'run {run_id} not found', 'code': 5,
                     'message': f'Run {run_id} not found'}
      states = self.progress.get(run_id, [])
      if states:
        run['state'] = states.pop(0) if len(states) > 1 else states[0]
      return 200, run
    if (method, route) == ('POST', '/recurringruns'):
      run = {**body, 'recurring_run_id': f'rr-{len(self.recurring_runs) + 1}',
             'status': 'ENABLED', 'created_at': '2025-01-01T00:00:00Z'}
      self.recurring_runs.append(run)
      return 200, run
    if (method, route) == ('GET', '/recurringruns'):
      return 200, {'recurringRuns': self.recurring_runs, 'total_size': len(self.recurring_runs)}
    if method == 'DELETE' and route.startswith('/recurringruns/'):
      run_id = route.rsplit('/', 1)[1]
      self.recurring_runs = [r for r in self.recurring_runs
                             if r['recurring_run_id'] != run_id]
      return 200, {}
    return 404, {'error': f'no route {method} {path}', 'code': 5, 'message': 'not found'}
