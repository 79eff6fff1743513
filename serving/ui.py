"""The digit page: draw or upload a digit, see what the model says, send a correction.

`python -m serving` serves it at `/` on its REST port. In front of the official TF Serving
it runs on its own and proxies TF Serving's REST API, so the browser sees one origin:

  python -m serving.ui --rest-url http://127.0.0.1:8501 --data-dir /data/mnist --port 8080

The page calls TF Serving's public REST API (status, metadata, :predict) and these routes:

  GET  /ui/config    the model's name, whether corrections are on, the limits
  POST /ui/mnist     an image (PNG/JPEG body) -> {"pixels": 28x28}, what the model is given
  POST /ui/feedback  {"label": 0-9, "image": base64 PNG/JPEG} -> <data>/incoming/<label>/
  GET  /ui/pending   {"pending": n}: corrections waiting for the next training run

The conversion is `trainer.mnist_image.to_mnist`, the one the sealer applies to stored
corrections, so the model is shown exactly what training will see.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import dataclasses
import functools
import io
import json
import logging
import math
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

import aiohttp
from aiohttp import web
from PIL import Image

from trainer import data_layout, mnist_image

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / 'static'
FORMATS = {'PNG': '.png', 'JPEG': '.jpg'}   # what write_incoming and the sealer take
# The page's own files only: no inline script or style, nothing from another origin.
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 2 * 1024 * 1024      # one image, base64 in JSON for feedback
  max_pixels: int = 4096 * 4096              # a small PNG can decode to gigabytes
  feedback_per_minute: int = 30              # per client IP


class PageError(Exception):
  """A refused request: HTTP status, message for `{"error": ...}`, extra headers."""

  def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
    super().__init__(message)
    self.status = status
    self.message = message
    self.headers = headers or {}


class RateLimiter:
  """At most `limit` calls per `window` seconds per key (a sliding window)."""

  def __init__(self, limit: int, window: float = 60.0,
               clock: Callable[[], float] = time.monotonic):
    self.limit = limit
    self.window = window
    self.clock = clock
    self._calls: Dict[str, Deque[float]] = {}

  def retry_after(self, key: str) -> float:
    """0 and the call is counted, or the seconds until one more is allowed."""
    now = self.clock()
    if len(self._calls) > 10_000:  # many clients: forget the ones whose window has passed
      self._calls = {k: q for k, q in self._calls.items() if q and q[-1] > now - self.window}
    calls = self._calls.setdefault(key, collections.deque())
    while calls and calls[0] <= now - self.window:
      calls.popleft()
    if len(calls) >= self.limit:
      return calls[0] + self.window - now
    calls.append(now)
    return 0.0


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
  """A fully decoded PNG or JPEG, or a PageError saying why not."""
  if not data:
    raise PageError(400, 'Expected a PNG or JPEG image, found an empty body')
  try:
    image = Image.open(io.BytesIO(data))
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many kinds)
    raise PageError(400, f'Expected a PNG or JPEG image, cannot decode it: {e}') from None
  if image.format not in FORMATS:
    raise PageError(400, f'Expected a PNG or JPEG image, found {image.format}')
  width, height = image.size
  if width * height > max_pixels:
    raise PageError(400, f'Expected at most {max_pixels} pixels, found {width}x{height}')
  try:
    image.load()
  except Exception as e:  # pylint: disable=broad-except
    raise PageError(400, f'Expected a PNG or JPEG image, cannot decode it: {e}') from None
  return image


async def read_limited(request: web.Request, limit: int) -> bytes:
  """The body, or 413 past `limit` bytes (read in chunks: a chunked body has no length)."""
  if request.content_length is not None and request.content_length > limit:
    raise PageError(413, f'Request body of {request.content_length} bytes exceeds the limit '
                         f'of {limit} bytes')
  body = bytearray()
  while chunk := await request.content.read(64 * 1024):
    body += chunk
    if len(body) > limit:
      raise PageError(413, f'Request body exceeds the limit of {limit} bytes')
  return bytes(body)


def _json(status: int, doc: Any, headers: Optional[Dict[str, str]] = None) -> web.Response:
  return web.json_response(doc, status=status, headers=headers)


def _refusals(handler: Callable) -> Callable:
  """A PageError raised by the handler becomes its JSON answer."""
  @functools.wraps(handler)
  async def wrapped(self: 'Page', request: web.Request) -> web.StreamResponse:
    try:
      return await handler(self, request)
    except PageError as e:
      return _json(e.status, {'error': e.message}, e.headers)
  return wrapped


class Page:
  """The page's routes: its files, the MNIST conversion, corrections into `incoming/`."""

  def __init__(self, model_name: str, data_dir: Optional[Path], limits: Limits = Limits(),
               on_correction: Optional[Callable[[int], None]] = None):
    self.model_name = model_name
    self.data_dir = Path(data_dir) if data_dir else None
    self.limits = limits
    self.on_correction = on_correction
    self.rate = RateLimiter(limits.feedback_per_minute)

  def routes(self) -> List[web.AbstractRouteDef]:
    return [web.get('/', self.index), web.static('/static', STATIC_DIR),
            web.get('/ui/config', self.config), web.post('/ui/mnist', self.mnist),
            web.post('/ui/feedback', self.feedback), web.get('/ui/pending', self.pending)]

  async def index(self, _: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / 'index.html', headers={
        'Content-Security-Policy': CSP, 'X-Content-Type-Options': 'nosniff',
        'Cache-Control': 'no-cache'})

  async def config(self, _: web.Request) -> web.Response:
    return _json(200, {'model_name': self.model_name, 'feedback': self.data_dir is not None,
                       'max_body_bytes': self.limits.max_body_bytes,
                       'feedback_per_minute': self.limits.feedback_per_minute})

  @_refusals
  async def mnist(self, request: web.Request) -> web.Response:
    data = await read_limited(request, self.limits.max_body_bytes)
    pixels = await asyncio.get_running_loop().run_in_executor(None, self._to_mnist, data)
    return _json(200, {'pixels': pixels.tolist()})

  def _to_mnist(self, data: bytes) -> Any:
    return mnist_image.to_mnist(decode_image(data, self.limits.max_pixels))

  @_refusals
  async def feedback(self, request: web.Request) -> web.Response:
    data_dir = self._data_dir()
    wait = self.rate.retry_after(request.remote or '')
    if wait:
      raise PageError(429, f'Too many corrections from {request.remote}: at most '
                           f'{self.limits.feedback_per_minute} a minute',
                      {'Retry-After': str(math.ceil(wait))})
    body = await read_limited(request, self.limits.max_body_bytes)
    try:
      doc = json.loads(body)
    except ValueError as e:
      raise PageError(400, f'Expected a JSON body {{"label": 0-9, "image": base64}}: {e}') from None
    if not isinstance(doc, dict):
      raise PageError(400, f'Expected a JSON object {{"label": 0-9, "image": base64}}, '
                           f'found {type(doc).__name__}')
    label = doc.get('label')
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
      raise PageError(400, f'Expected "label" an integer 0-9, found {json.dumps(label)}')
    if not isinstance(doc.get('image'), str):
      raise PageError(400, 'Expected "image": a base64 PNG or JPEG')
    try:
      data = base64.b64decode(doc['image'], validate=True)
    except (binascii.Error, ValueError) as e:
      raise PageError(400, f'Expected "image" in base64: {e}') from None
    stored, pending = await asyncio.get_running_loop().run_in_executor(
        None, self._store, data_dir, label, data)
    if self.on_correction:
      self.on_correction(label)
    log.info('Correction stored: %s', stored)
    return _json(201, {'label': label, 'stored': stored.relative_to(data_dir).as_posix(),
                       'pending': pending})

  def _store(self, data_dir: Path, label: int, data: bytes) -> tuple:
    """Keeps the bytes as sent (see docs/serving.md, "The page"), once they are a digit."""
    image = decode_image(data, self.limits.max_pixels)
    if not mnist_image.to_mnist(image).any():
      raise PageError(400, 'Expected a digit, found a blank image')
    stored = data_layout.write_incoming(data_dir, label, data, FORMATS[image.format])
    return stored, data_layout.count_incoming(data_dir)

  @_refusals
  async def pending(self, _: web.Request) -> web.Response:
    data_dir = self._data_dir()
    count = await asyncio.get_running_loop().run_in_executor(
        None, data_layout.count_incoming, data_dir)
    return _json(200, {'pending': count})

  def _data_dir(self) -> Path:
    if self.data_dir is None:
      raise PageError(503, 'Corrections are off: the server was started without --data-dir')
    return self.data_dir


class RestProxy:
  """Forwards `/v1/...` to TF Serving's REST API, so the page has a single origin."""

  def __init__(self, rest_url: str, max_body_bytes: int = 1024 * 1024, timeout: float = 30):
    self.rest_url = rest_url.rstrip('/')
    self.max_body_bytes = max_body_bytes
    self.timeout = aiohttp.ClientTimeout(total=timeout)
    self._session: Optional[aiohttp.ClientSession] = None

  def routes(self) -> List[web.AbstractRouteDef]:
    return [web.get('/v1/{tail:.*}', self.forward), web.post('/v1/{tail:.*}', self.forward)]

  async def session(self, _: web.Application) -> Any:
    """aiohttp cleanup context: one client session for the app's life."""
    async with aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False) as session:
      self._session = session
      yield

  async def forward(self, request: web.Request) -> web.Response:
    try:
      body = await read_limited(request, self.max_body_bytes) if request.method == 'POST' else None
    except PageError as e:
      return _json(e.status, {'error': e.message})
    url = self.rest_url + request.rel_url.raw_path_qs
    headers = {'Content-Type': request.headers.get('Content-Type', 'application/json')}
    assert self._session is not None, 'the proxy runs inside its app (cleanup context)'
    try:
      async with self._session.request(request.method, url, data=body,
                                       headers=headers) as upstream:
        return web.Response(status=upstream.status, body=await upstream.read(),
                            content_type=upstream.content_type)
    except asyncio.TimeoutError:
      return _json(504, {'error': f'TF Serving at {self.rest_url} did not answer in '
                                  f'{self.timeout.total:g} s'})
    except aiohttp.ClientError as e:
      return _json(502, {'error': f'Cannot reach TF Serving at {self.rest_url}: {e}'})


def standalone_app(page: Page, proxy: RestProxy) -> web.Application:
  app = web.Application()
  app.router.add_routes(page.routes() + proxy.routes())
  app.cleanup_ctx.append(proxy.session)
  return app


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m serving.ui',
      description='The digit page in front of a TF Serving REST API (proxied, one origin).')
  parser.add_argument('--rest-url', required=True, help='TF Serving REST, e.g. http://host:8501')
  parser.add_argument('--model-name', default='mnist')
  parser.add_argument('--data-dir', type=Path,
                      help='corrections go to <data-dir>/incoming/<label>/; none: corrections off')
  parser.add_argument('--host', default='127.0.0.1',
                      help='address to bind (default loopback; 0.0.0.0 to expose)')
  parser.add_argument('--port', type=int, default=8080, help='0 picks a free port (logged)')
  parser.add_argument('--log-level', default='INFO')
  return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
  """Until SIGTERM / SIGINT; an interrupted correction is lost whole (write_incoming)."""
  page = Page(args.model_name, args.data_dir)
  runner = web.AppRunner(standalone_app(page, RestProxy(args.rest_url)), access_log=None,
                         handle_signals=False)
  await runner.setup()
  sock = socket.create_server((args.host, args.port),
                              family=socket.AF_INET6 if ':' in args.host else socket.AF_INET)
  await web.SockSite(runner, sock).start()
  log.info('The page: http://%s:%d/ (TF Serving at %s, corrections %s)', args.host,
           sock.getsockname()[1], args.rest_url,
           f'into {args.data_dir}/incoming' if args.data_dir else 'off')
  stop = asyncio.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
  await stop.wait()
  await runner.cleanup()


def main(argv: Optional[List[str]] = None) -> None:
  args = parse_args(argv)
  logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(message)s',
                      datefmt='%H:%M:%S', force=True)
  asyncio.run(serve(args))


if __name__ == '__main__':
  main()
