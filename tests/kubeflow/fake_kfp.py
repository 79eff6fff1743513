"""A loopback stand-in for the Kubeflow Pipelines API server that records requests.

It answers the KFP v2beta1 REST calls `kfp.Client` makes for submit/schedule/list/delete,
with bodies built from kfp_server_api's own models (so the client parses them as it would
the real server's), and can be told to fail a route with a status and message. It refuses
a run or recurring run without `runtime_config.pipeline_root`: the real server accepts it,
but then the driver ignores the spec's root and writes to the namespace default.

Pipelines and versions follow the API server of KFP 2.0.5 and 2.2.0
(backend/src/apiserver/server/pipeline_upload_server.go, pipeline_server.go,
resource/resource_manager.go): the multipart routes `/pipelines/upload` (query `name`,
`description`, `namespace`; returns the Pipeline) and `/pipelines/upload_version` (query
`name`, `pipelineid`, `description`; returns the PipelineVersion, its `pipeline_spec` the
file's documents as `{pipeline_spec, platform_spec}`), the file in form field
`uploadfile`, errors as `{error_message, error_details}`, 409 for a name taken; a run of a
version that does not exist fails (HTTP 500, as the server wraps the lookup's not-found).

Like the real server (backend 2.0.0 and 2.2.0, template/v2_template.go
validatePipelineJobInputs), it refuses runtime parameters the spec's root does not
declare, a required one left out, and values of the wrong kind.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import http.server
import json
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import kfp_server_api
import yaml

API = '/apis/v2beta1'


@dataclasses.dataclass
class Request:
  method: str
  path: str
  query: Dict[str, List[str]]
  body: Any
  headers: Dict[str, str]  # lower-case names


NUMBER_TYPES = ('NUMBER_DOUBLE', 'NUMBER_INTEGER')


def parameter_problem(body: Dict[str, Any], spec: Optional[Dict[str, Any]]) -> Optional[str]:
  """What validatePipelineJobInputs says of the run's runtime parameters, if anything;
  `spec` is the pipeline spec the run runs (inline, or its pipeline version's)."""
  if spec is None:
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
    self.pipelines: List[Any] = []
    self.versions: List[Any] = []  # V2beta1PipelineVersion, oldest first
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
        content_type = self.headers.get('Content-Type') or ''
        if content_type.startswith('multipart/form-data'):
          body = _form(content_type, raw)
        else:
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
    if route.startswith('/pipelines'):
      return self.answer_pipelines(method, route, body, query)
    if method == 'POST' and route in ('/runs', '/recurringruns'):
      refused = self.check_version_reference(body.get('pipeline_version_reference'))
      if refused:
        return refused
    if method == 'POST' and route in ('/runs', '/recurringruns') and not (
        (body.get('runtime_config') or {}).get('pipeline_root')):
      return 400, {'error': 'no runtime_config.pipeline_root', 'code': 3,
                   'message': 'no runtime_config.pipeline_root: the driver would use the '
                              "namespace's kfp-launcher ConfigMap, not the spec's root"}
    problem = (parameter_problem(body, self.run_spec(body)) if method == 'POST' and
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

  # Pipelines and versions --------------------------------------------------------------

  def answer_pipelines(self, method: str, route: str, body: Any,
                       query: Dict[str, List[str]]) -> Tuple[int, Any]:
    one = lambda name: (query.get(name) or [''])[0]  # pylint: disable=unnecessary-lambda-assignment
    if (method, route) == ('GET', '/pipelines'):
      found = [p for p in self.pipelines if _matches(p, one('filter'))
               and (p.namespace or '') == one('namespace')]
      return 200, _json(kfp_server_api.V2beta1ListPipelinesResponse(
          pipelines=found or None, total_size=len(found)))
    if (method, route) == ('POST', '/pipelines'):
      return self.create_pipeline(body['display_name'], body.get('description') or '',
                                  body.get('namespace') or '')
    if method == 'POST' and route.startswith('/pipelines/upload') and not (
        body['uploadfile'][0].endswith(('.yaml', '.yml', '.json'))):
      # ReadPipelineFile takes the format from the name (or zip/tarball content).
      return _upload_error(400, 'Failed to read a pipeline spec file: Unexpected pipeline '
                                'file format. Support .zip, .tar.gz, .json or YAML')
    if (method, route) == ('POST', '/pipelines/upload'):
      name = one('name') or body['uploadfile'][0].rsplit('.', 1)[0]  # as buildPipelineName
      status, pipeline = self.create_pipeline(name, one('description'), one('namespace'))
      if status != 200:
        return status, pipeline
      self.add_version(pipeline['pipeline_id'], name, one('description'), body['uploadfile'])
      return 200, pipeline
    if (method, route) == ('POST', '/pipelines/upload_version'):
      if not one('pipelineid'):
        return _upload_error(400, 'Failed to create a pipeline version due to error reading '
                                  'pipeline id')
      if not any(p.pipeline_id == one('pipelineid') for p in self.pipelines):
        return _upload_error(400, 'Failed to create a pipeline version due to error reading '
                                  f'namespace: Pipeline {one("pipelineid")} not found')
      name = one('name') or body['uploadfile'][0].rsplit('.', 1)[0]
      if any(v.pipeline_id == one('pipelineid') and v.display_name == name
             for v in self.versions):
        return _upload_error(409, 'Failed to create a pipeline version. The pipeline already '
                                  'exists.')
      return 200, _json(self.add_version(one('pipelineid'), name, one('description'),
                                         body['uploadfile']))
    parts = route.split('/')  # ['', 'pipelines', ID, 'versions'(, VERSION)]
    if method == 'GET' and len(parts) == 4 and parts[3] == 'versions':
      found = [v for v in self.versions if v.pipeline_id == parts[2]]
      if query.get('sort_by') == ['created_at desc']:
        found = found[::-1]
      size = int(one('page_size') or 10)
      return 200, _json(kfp_server_api.V2beta1ListPipelineVersionsResponse(
          pipeline_versions=found[:size] or None, total_size=len(found)))
    return 404, {'error': f'no route {method} {route}', 'code': 5, 'message': 'not found'}

  def create_pipeline(self, name: str, description: str, namespace: str) -> Tuple[int, Any]:
    if any(p.display_name == name and (p.namespace or '') == namespace
           for p in self.pipelines):
      message = (f'Failed to create a pipeline due to server error: Pipeline with name {name} '
                 f'already exists')
      return 409, {'error': message, 'code': 6, 'message': message}
    pipeline = kfp_server_api.V2beta1Pipeline(
        pipeline_id=f'pipeline-{len(self.pipelines) + 1}', display_name=name,
        description=description, namespace=namespace or None,
        created_at='2025-01-01T00:00:00Z')
    self.pipelines.append(pipeline)
    return 200, _json(pipeline)

  def add_version(self, pipeline_id: str, name: str, description: str,
                  upload: Tuple[str, bytes]) -> Any:
    """Stores the file's documents as the server does: the pipeline spec alone, or with a
    platform spec as {pipeline_spec, platform_spec}."""
    documents = [d for d in yaml.safe_load_all(upload[1].decode()) if d]
    platform = [d for d in documents if 'platforms' in d]
    spec = [d for d in documents if 'platforms' not in d]
    if len(spec) != 1 or len(platform) > 1 or 'pipelineInfo' not in spec[0]:
      raise ValueError(f'{upload[0]}: expected a pipeline spec and at most one platform spec')
    stored = ({'pipeline_spec': spec[0], 'platform_spec': platform[0]} if platform
              else spec[0])
    version = kfp_server_api.V2beta1PipelineVersion(
        pipeline_id=pipeline_id, pipeline_version_id=f'version-{len(self.versions) + 1}',
        display_name=name, description=description or None, pipeline_spec=stored,
        created_at=f'2025-01-01T00:{len(self.versions) // 60:02d}:{len(self.versions) % 60:02d}Z')
    self.versions.append(version)
    return version

  def version(self, version_id: Optional[str]) -> Any:
    """The uploaded pipeline version of that id, or None."""
    return next((v for v in self.versions if v.pipeline_version_id == version_id), None)

  def run_spec(self, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The pipeline spec a run or recurring run request runs: inline or its version's."""
    inline = (body.get('pipeline_spec') or {}).get('pipeline_spec')
    if inline is not None:
      return inline
    version_id = (body.get('pipeline_version_reference') or {}).get('pipeline_version_id')
    version = self.version(version_id)
    if version is None:
      return None
    stored = version.pipeline_spec or {}
    return stored if 'pipelineInfo' in stored else stored.get('pipeline_spec')

  def check_version_reference(self, reference: Optional[Dict[str, str]]
                              ) -> Optional[Tuple[int, Any]]:
    """The server's refusals of a run whose pipeline version is unknown or another's."""
    if not reference or not reference.get('pipeline_version_id'):
      return None
    version_id = reference['pipeline_version_id']
    version = self.version(version_id)
    if version is None:
      message = (f'Failed to create a run due to error fetching manifest: Failed to fetch a '
                 f'pipeline version and its manifest from pipeline version {version_id}: '
                 f'PipelineVersion {version_id} not found')
      return 500, {'error': message, 'code': 13, 'message': message}
    if reference.get('pipeline_id') and reference['pipeline_id'] != version.pipeline_id:
      message = (f'Pipeline version {version_id} belongs to pipeline {version.pipeline_id} '
                 f'(not {reference["pipeline_id"]})')
      return 400, {'error': message, 'code': 3, 'message': message}
    return None


def _form(content_type: str, raw: bytes) -> Dict[str, Tuple[str, bytes]]:
  """A multipart/form-data body: {field: (file name, content)}."""
  message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
      f'Content-Type: {content_type}\r\n\r\n'.encode() + raw)
  return {part.get_param('name', header='content-disposition'):
          (part.get_filename() or '', part.get_payload(decode=True))
          for part in message.iter_parts()}


def _matches(pipeline: Any, filter_json: str) -> bool:
  """The EQUALS-on-display_name filter kfp.Client sends; anything else matches all."""
  if not filter_json:
    return True
  return all(p.get('key') != 'display_name' or p.get('stringValue') == pipeline.display_name
             for p in json.loads(filter_json).get('predicates', []))


def _upload_error(status: int, message: str) -> Tuple[int, Any]:
  """The upload routes' own error body (apiv1beta1.Error), not the gRPC gateway's."""
  return status, {'error_message': message, 'error_details': message}
