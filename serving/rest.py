"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) on aiohttp.

URLs are matched with TF Serving's own regular expressions, errors come back as
`{"error": "..."}` with its HTTP codes. Small requests run on the event loop; larger ones
are decoded, run and encoded together in a worker thread (one hop per request), so a
big batch never stalls other connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

from aiohttp import web
from google.protobuf import json_format

from serving import codec, metrics
from serving.errors import ServingError, invalid, too_large
from serving.limits import STRING_ELEMENT_BYTES, check_json_inputs
from serving.models import ModelManager, VersionStatus
from serving.servable import Servable

log = logging.getLogger(__name__)

# TF Serving's kPredictionApiGegex / kModelStatusApiRegex (http_rest_api_util.cc).
PREDICT_PATH = re.compile(r'(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?'
                          r':(classify|regress|predict)')
STATUS_PATH = re.compile(r'(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|'
                         r'(?:/labels/([^/:]+)))?(?:/(metadata))?')
API_PATH = re.compile(r'(?i)/v1/.*')
# Requests this small (a few images) run on the event loop: ~1 ms of work, and skipping
# the thread hop saves ~0.2 ms of a batch-1 call. Larger ones go to the worker threads.
INLINE_MAX_BODY = 16 * 1024

_metadata_cache: 'weakref.WeakKeyDictionary[Servable, Dict[str, Any]]' = weakref.WeakKeyDictionary()


def status_json(statuses: List[VersionStatus]) -> Dict[str, Any]:
  """GetModelStatusResponse as proto3 JSON (int64 version as a string)."""
  return {'model_version_status': [
      {'version': str(s.version), 'state': s.state,
       'status': {'error_code': s.error_code.name, 'error_message': s.error_message}}
      for s in statuses]}


def metadata_json(servable: Servable) -> Dict[str, Any]:
  """GetModelMetadataResponse the way TF Serving prints it (field names kept)."""
  if servable not in _metadata_cache:
    _metadata_cache[servable] = json_format.MessageToDict(
        servable.signature_def_map, preserving_proto_field_name=True,
        including_default_value_fields=True)
  return {'model_spec': {'name': servable.name, 'signature_name': '',
                         'version': str(servable.version)},
          'metadata': {'signature_def': _metadata_cache[servable]}}


def _parse_version(text: Optional[str]) -> Optional[int]:
  if not text:
    return None
  version = int(text)
  if version >= 2 ** 63:
    raise invalid(f'Failed to convert version: {text} to numeric.')
  return version


def _json(status: int, body: bytes) -> web.Response:
  return web.Response(status=status, body=body, content_type='application/json')


def error_response(error: ServingError) -> web.Response:
  return _json(error.http_status, codec.dumps({'error': error.message}))


class RestApi:
  """The request handlers; `app()` wires them into an aiohttp application.

  With `inline=False` (server-side batching) every inference request waits in a worker
  thread, since its batch may take a while to fill; the event loop never blocks."""

  def __init__(self, manager: ModelManager, max_body_bytes: int, threads: int,
               inline: bool = True):
    self.manager = manager
    self.max_body_bytes = max_body_bytes
    self.inline_max_body = INLINE_MAX_BODY if inline else -1
    self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix='rest-infer')

  def app(self, routes: Sequence[web.AbstractRouteDef] = ()) -> web.Application:
    """`routes` (the page's) are matched before the API's catch-all."""
    # aiohttp's own size check is a backstop; handle() answers 413 first, as JSON.
    app = web.Application(client_max_size=self.max_body_bytes + 1)
    app.router.add_routes(routes)
    app.router.add_route('*', '/{tail:.*}', self.handle)
    app.on_cleanup.append(self._shutdown)
    return app

  async def _shutdown(self, _: web.Application) -> None:
    self.pool.shutdown(wait=True)

  async def handle(self, request: web.Request) -> web.Response:
    path = request.rel_url.raw_path
    try:
      if request.method == 'POST' and (match := PREDICT_PATH.fullmatch(path)):
        return await self._infer(request, *match.groups())
      if request.method == 'GET' and path == metrics.PATH:
        return web.Response(body=metrics.exposition(),
                            headers={'Content-Type': metrics.CONTENT_TYPE})
      if request.method == 'GET' and (match := STATUS_PATH.fullmatch(path)):
        name, version, label, metadata = match.groups()
        if not name:
          raise invalid('Missing model name in request.')
        name, label = urllib.parse.unquote(name), urllib.parse.unquote(label or '')
        if metadata:
          servable = self.manager.resolve(name, _parse_version(version), label or None)
          return _json(200, codec.dumps(metadata_json(servable)))
        statuses = self.manager.status(name, _parse_version(version), label or None)
        return _json(200, codec.dumps(status_json(statuses)))
      if API_PATH.fullmatch(path):
        raise invalid(f'Malformed request: {request.method} {path}')
      return _json(404, codec.dumps({'error': f'Not found: {request.method} {path}'}))
    except ServingError as e:
      return error_response(e)
    except Exception as e:  # pylint: disable=broad-except
      log.exception('Internal error on %s %s', request.method, path)
      return _json(500, codec.dumps({'error': f'Internal error: {type(e).__name__}: {e}'}))

  async def _infer(self, request: web.Request, name: str, version: Optional[str],
                   label: Optional[str], verb: str) -> web.Response:
    """One predict/classify/regress, counted and timed in the metrics like TF Serving's
    (API label = the verb, entrypoint REST)."""
    start = time.perf_counter()
    verb, name = verb.lower(), urllib.parse.unquote(name)
    status = 'INTERNAL'
    try:
      body = await self._read_body(request)
      call = (self.infer, verb, name, _parse_version(version),
              urllib.parse.unquote(label or ''), body)
      if len(body) <= self.inline_max_body:
        payload = call[0](*call[1:])
      else:
        payload = await asyncio.get_running_loop().run_in_executor(self.pool, *call)
      status = 'OK'
      return _json(200, payload)
    except ServingError as e:
      status = e.code.name
      raise
    finally:
      metrics.record_request(name, verb, 'REST', status, time.perf_counter() - start)

  async def _read_body(self, request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > self.max_body_bytes:
      raise too_large(f'Request body of {request.content_length} bytes exceeds the server\'s '
                      f'limit of {self.max_body_bytes} bytes')
    try:
      return await request.read()
    except web.HTTPRequestEntityTooLarge:
      raise too_large(f'Request body exceeds the server\'s limit of {self.max_body_bytes} '
                      f'bytes') from None

  def infer(self, verb: str, name: str, version: Optional[int], label: str,
            body: bytes) -> bytes:
    """Decode, run and encode one request (in a worker thread)."""
    doc = codec.loads(body)
    signature_name = codec.signature_name(doc)
    servable = self.manager.resolve(name, version, label or None)
    if verb == 'predict':
      sig = servable.signature(signature_name)
      specs = {k: (STRING_ELEMENT_BYTES if info.is_string else info.numpy_dtype.itemsize,
                   info.shape) for k, info in sig.inputs.items()}
      inputs, row_format = codec.predict_inputs(
          doc, {k: info.numpy_dtype for k, info in sig.inputs.items()},
          lambda values: check_json_inputs(values, specs, servable.limits))
      return codec.predict_response(servable.predict(signature_name, inputs), row_format)
    examples = codec.examples(doc, servable.limits)
    if verb == 'classify':
      return codec.classify_response(*servable.classify(signature_name, examples))
    return codec.regress_response(servable.regress(signature_name, examples))
