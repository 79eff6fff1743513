"""The page's HTTP endpoints: the MNIST conversion, corrections into incoming/ and their
limits, the page inside `python -m serving`, and `python -m serving.ui` proxying TF Serving's
REST API (here the project's server stands in for TF Serving)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from typing import Iterator

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from serving import process, ui
from tests.serving import browser
from tests.serving.helpers import call
from trainer import data_layout, mnist_image


@contextlib.contextmanager
def serve_app(app: web.Application) -> Iterator[str]:
  """Runs an aiohttp app on a free loopback port in a thread; yields its base URL."""
  loop = asyncio.new_event_loop()
  runner = web.AppRunner(app)
  loop.run_until_complete(runner.setup())
  sock = socket.create_server(('127.0.0.1', 0))
  loop.run_until_complete(web.SockSite(runner, sock).start())
  thread = threading.Thread(target=loop.run_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{sock.getsockname()[1]}'
  finally:
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def page_app(data_dir, limits: ui.Limits = ui.Limits(), corrections=None) -> web.Application:
  app = web.Application()
  page = ui.Page('mnist', data_dir, limits, on_correction=corrections)
  app.router.add_routes(page.routes())
  return app


def encode(pixels: np.ndarray, fmt: str = 'PNG') -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, fmt)
  return out.getvalue()


def drawing(mnist_test, index: int = 0) -> bytes:
  """A test digit the way the page sends one: dark ink on white, 280x280."""
  image = Image.fromarray(255 - mnist_test.images[index]).resize((280, 280), Image.BILINEAR)
  return encode(np.asarray(image))


def feedback(url: str, label, image: bytes):
  return call(f'{url}/ui/feedback', {'label': label, 'image': base64.b64encode(image).decode()})


def test_mnist_endpoint_answers_what_to_mnist_makes(mnist_test):
  data = drawing(mnist_test)
  with serve_app(page_app(None)) as url:
    status, body = call(f'{url}/ui/mnist', raw=data, headers={'Content-Type': 'image/png'})
    bad_status, bad = call(f'{url}/ui/mnist', raw=b'\x89PNG\r\n\x1a\nnot really',
                           headers={'Content-Type': 'image/png'})
  assert status == 200
  np.testing.assert_array_equal(np.array(body['pixels'], np.uint8),
                                mnist_image.to_mnist(Image.open(io.BytesIO(data))))
  assert bad_status == 400 and 'cannot decode' in bad['error']


def test_correction_is_stored_as_sent_and_counted(mnist_test, tmp_path):
  png, jpeg = drawing(mnist_test), encode(255 - mnist_test.images[1], 'JPEG')
  counted = []
  with serve_app(page_app(tmp_path, corrections=counted.append)) as url:
    assert call(f'{url}/ui/pending') == (200, {'pending': 0})
    status, body = feedback(url, int(mnist_test.labels[0]), png)
    jpeg_status, jpeg_body = feedback(url, 3, jpeg)
    pending = call(f'{url}/ui/pending')
  assert status == 201, body
  label = int(mnist_test.labels[0])
  assert re.fullmatch(rf'incoming/{label}/[0-9a-f]{{32}}\.png', body['stored'])
  assert (tmp_path / body['stored']).read_bytes() == png
  assert jpeg_status == 201 and jpeg_body['stored'].endswith('.jpg')
  assert (tmp_path / jpeg_body['stored']).read_bytes() == jpeg
  assert (body['pending'], jpeg_body['pending'], pending) == (1, 2, (200, {'pending': 2}))
  assert counted == [label, 3]


def gif() -> bytes:
  out = io.BytesIO()
  Image.new('L', (28, 28), 255).save(out, 'GIF')
  return out.getvalue()


@pytest.mark.parametrize('doc, status, message', [
    ({'label': 10}, 400, 'Expected "label" an integer 0-9, found 10'),
    ({'label': -1}, 400, 'an integer 0-9, found -1'),
    ({'label': '7'}, 400, 'an integer 0-9, found "7"'),
    ({'label': True}, 400, 'an integer 0-9, found true'),
    ({'label': 7.0}, 400, 'an integer 0-9, found 7.0'),
    ({}, 400, 'an integer 0-9, found null'),
    ({'label': 7, 'image': None}, 400, 'Expected "image": a base64 PNG or JPEG'),
    ({'label': 7, 'image': 'not base64!'}, 400, 'Expected "image" in base64'),
    ({'label': 7, 'image': base64.b64encode(b'\x89PNG\r\n\x1a\ntruncated').decode()}, 400,
     'Expected a PNG or JPEG image, cannot decode it'),
    ({'label': 7, 'image': base64.b64encode(b'hello').decode()}, 400, 'cannot decode it'),
    ({'label': 7, 'image': base64.b64encode(gif()).decode()}, 400,
     'Expected a PNG or JPEG image, found GIF'),
    ({'label': 7, 'image': base64.b64encode(encode(np.full((50, 50), 255, np.uint8))).decode()},
     400, 'Expected a digit, found a blank image'),
    ({'label': 7, 'image': base64.b64encode(encode(np.zeros((80, 80), np.uint8))).decode()},
     400, 'Expected at most 4096 pixels, found 80x80'),
    ([7], 400, 'Expected a JSON object'),
])
def test_feedback_refuses_with_a_clear_error(tmp_path, doc, status, message):
  with serve_app(page_app(tmp_path, ui.Limits(max_pixels=64 * 64))) as url:
    answer = call(f'{url}/ui/feedback', doc)
  assert answer[0] == status and message in answer[1]['error'], answer
  assert data_layout.count_incoming(tmp_path) == 0


def test_feedback_refuses_a_body_over_the_limit_and_broken_json(tmp_path):
  with serve_app(page_app(tmp_path, ui.Limits(max_body_bytes=1000))) as url:
    big = call(f'{url}/ui/feedback', raw=b'{' + b' ' * 2000 + b'}')
    chunked = call(f'{url}/ui/feedback', raw=iter([b' ' * 600, b' ' * 600]))  # no length
    broken = call(f'{url}/ui/feedback', raw=b'{"label": 7,')
  assert big == (413, {'error': 'Request body of 2002 bytes exceeds the limit of 1000 bytes'})
  assert chunked == (413, {'error': 'Request body exceeds the limit of 1000 bytes'})
  assert broken[0] == 400 and broken[1]['error'].startswith('Expected a JSON body')


def test_feedback_is_rate_limited_per_client(mnist_test, tmp_path):
  with serve_app(page_app(tmp_path, ui.Limits(feedback_per_minute=3))) as url:
    answers = [feedback(url, 1, drawing(mnist_test))[0] for _ in range(3)]
    connection = http.client.HTTPConnection('127.0.0.1', urllib.parse.urlsplit(url).port)
    connection.request('POST', '/ui/feedback', body=b'{}')
    response = connection.getresponse()
    limited = (response.status, response.getheader('Retry-After'), json.loads(response.read()))
    connection.close()
  assert answers == [201, 201, 201]
  assert limited[0] == 429 and 1 <= int(limited[1]) <= 60
  assert limited[2] == {'error': 'Too many corrections from 127.0.0.1: at most 3 a minute'}
  assert data_layout.count_incoming(tmp_path) == 3


def test_rate_limiter_window_slides():
  now = [0.0]
  limiter = ui.RateLimiter(2, window=60, clock=lambda: now[0])
  assert limiter.retry_after('a') == 0
  now[0] = 30
  assert limiter.retry_after('a') == 0
  assert limiter.retry_after('a') == 30 and limiter.retry_after('b') == 0
  now[0] = 60.5
  assert limiter.retry_after('a') == 0     # the call at 0 left the window
  assert limiter.retry_after('a') == pytest.approx(29.5)


def test_without_data_dir_corrections_are_off(mnist_test):
  with serve_app(page_app(None)) as url:
    config = call(f'{url}/ui/config')
    answers = [feedback(url, 1, drawing(mnist_test)), call(f'{url}/ui/pending')]
  assert config == (200, {'model_name': 'mnist', 'feedback': False, 'max_body_bytes': 2097152,
                          'feedback_per_minute': 30})
  for status, body in answers:
    assert (status, body) == (503, {
        'error': 'Corrections are off: the server was started without --data-dir'})


def test_the_model_server_serves_the_page_beside_the_api(server):
  status, html = call(f'{server.rest_url}/', method='GET')
  assert status == 200 and '<canvas id="pad"' in html
  for path in ('/static/app.js', '/static/style.css'):
    assert call(f'{server.rest_url}{path}', method='GET')[0] == 200
  assert call(f'{server.rest_url}/ui/config')[1]['feedback'] is False  # no --data-dir
  assert call(f'{server.rest_url}/ui/pending')[0] == 503
  assert call(f'{server.rest_url}/v1/models/mnist')[0] == 200
  assert call(f'{server.rest_url}/nothing/here')[0] == 404


def test_standalone_page_proxies_tf_servings_rest_api(server, mnist_test):
  body = {'instances': mnist_test.images[:2].tolist()}
  with serve_app(ui.standalone_app(ui.Page('mnist', None), ui.RestProxy(server.rest_url))) as url:
    for path in ('/v1/models/mnist', '/v1/models/mnist/metadata', '/v1/models/nope'):
      assert call(url + path) == call(server.rest_url + path)
    assert call(f'{url}/v1/models/mnist:predict', body) == \
        call(f'{server.rest_url}/v1/models/mnist:predict', body)
    assert call(f'{url}/', method='GET')[0] == 200
  closed = socket.create_server(('127.0.0.1', 0))
  down = f'http://127.0.0.1:{closed.getsockname()[1]}'
  closed.close()
  with serve_app(ui.standalone_app(ui.Page('mnist', None), ui.RestProxy(down))) as url:
    status, error = call(f'{url}/v1/models/mnist')
  assert status == 502 and error['error'].startswith(f'Cannot reach TF Serving at {down}')


def test_python_m_serving_ui_runs_on_its_own(server, tmp_path):
  log_path = tmp_path / 'ui.log'
  with open(log_path, 'wb') as log:
    command = [sys.executable, '-m', 'serving.ui', '--rest-url', server.rest_url,
               '--data-dir', str(tmp_path / 'data'), '--port', '0']
    ui_process = subprocess.Popen(command, cwd=process.PROJECT_ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
  try:
    process.wait_for(lambda: 'The page: http://' in log_path.read_text(), 30,
                     what='python -m serving.ui to listen')
    url = re.search(r'The page: (http://\S+)/ ', log_path.read_text()).group(1)
    assert call(f'{url}/ui/config')[1]['feedback'] is True
    assert call(f'{url}/v1/models/mnist') == call(f'{server.rest_url}/v1/models/mnist')
  finally:
    ui_process.send_signal(signal.SIGTERM)
    assert ui_process.wait(10) == 0, log_path.read_text()
  assert 'Traceback' not in log_path.read_text()


def test_chromium_set_up_installs_or_skips_saying_why(monkeypatch, tmp_path):
  said = []
  monkeypatch.setattr(browser, 'CHROMIUM', str(tmp_path / 'chromium'))
  monkeypatch.setattr(browser, 'INSTALL', (['true'], ['false']))
  with pytest.raises(pytest.skip.Exception, match=r'`false` failed \(exit 1\), so no .*chromium'):
    browser.ensure_chromium(said.append)
  monkeypatch.setattr(browser, 'INSTALL', (['true'],))
  with pytest.raises(pytest.skip.Exception, match='`true` succeeded but left no'):
    browser.ensure_chromium(said.append)
  assert said == [f'[browser tests] {tmp_path}/chromium is missing; running: {c}'
                  for c in ('true', 'false', 'true')]
