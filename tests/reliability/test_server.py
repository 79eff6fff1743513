"""The model server (`python -m serving`, a real process on loopback) serving the model the
scenario's pipeline pushed: malformed requests, a version that fails to load, and 16
clients for 60 seconds while a new version is pushed. Tests run in file order on one
server; each checks what it changed, not absolute version numbers."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from typing import List, Tuple

import numpy as np
import pytest

from components import atomic_pusher
from trainer import idx
from serving import process
from tests.reliability.conftest import MODEL_NAME
from tests.serving.conftest import MNIST_DIR
from tests.serving.helpers import call

PREDICT = f'/v1/models/{MODEL_NAME}:predict'
IMAGE = [[0] * 28] * 28
MAX_BATCH = 100            # the server fixture's --max-batch-size
MAX_BODY = 1024 * 1024     # and --max-body-bytes


@pytest.fixture(scope='module')
def good(server):
  """A valid request and the server's answer to it before any test here ran."""
  image = idx.load_source(MNIST_DIR, 'test', 1).images
  body = json.dumps({'instances': image.tolist()}).encode()
  status, answer = call(server.rest_url + PREDICT, raw=body)
  assert status == 200, answer
  return body, answer


def _json(doc) -> bytes:
  return json.dumps(doc).encode()


def _raw_image(token: str) -> bytes:
  """An image whose first pixel is a bare JSON token (NaN, Infinity, 1e39...)."""
  rows = json.dumps(IMAGE)
  return ('{"instances": [' + rows.replace('0', token, 1) + ']}').encode()


# (id, method, path, body, expected status)
BAD = [
    ('broken-json', 'POST', PREDICT, b'{"instances": [[1, 2', 400),
    ('not-json', 'POST', PREDICT, b'hello', 400),
    ('top-level-array', 'POST', PREDICT, b'[1, 2]', 400),
    ('top-level-null', 'POST', PREDICT, b'null', 400),
    ('empty-body', 'POST', PREDICT, b'', 400),
    ('invalid-utf8', 'POST', PREDICT, b'\xff\xfe{"instances": []}', 400),
    ('nested-100k-deep', 'POST', PREDICT,
     b'{"instances": ' + b'[' * 100_000 + b']' * 100_000 + b'}', 400),
    ('no-instances-key', 'POST', PREDICT, _json({'something': 1}), 400),
    ('instances-and-inputs', 'POST', PREDICT, _json({'instances': [IMAGE], 'inputs': [IMAGE]}),
     400),
    ('instances-not-a-list', 'POST', PREDICT, _json({'instances': 5}), 400),
    ('empty-instances', 'POST', PREDICT, _json({'instances': []}), 400),
    ('empty-inputs', 'POST', PREDICT, _json({'inputs': []}), 400),
    ('shape-27-rows', 'POST', PREDICT, _json({'instances': [IMAGE[:27]]}), 400),
    ('shape-flat-784', 'POST', PREDICT, _json({'instances': [[0] * 784]}), 400),
    ('shape-extra-dim', 'POST', PREDICT, _json({'instances': [[IMAGE]]}), 400),
    ('ragged-rows', 'POST', PREDICT, _json({'instances': [IMAGE[:27] + [[0] * 27]]}), 400),
    ('strings', 'POST', PREDICT, _json({'instances': [[['x'] * 28] * 28]}), 400),
    ('booleans', 'POST', PREDICT, _json({'instances': [[[True] * 28] * 28]}), 400),
    ('nulls', 'POST', PREDICT, _json({'instances': [[[None] * 28] * 28]}), 400),
    ('object-among-lists', 'POST', PREDICT, _json({'instances': [IMAGE, {'image': IMAGE}]}), 400),
    ('wrong-input-name', 'POST', PREDICT, _json({'inputs': {'pixels': [IMAGE]}}), 400),
    ('nan', 'POST', PREDICT, _raw_image('NaN'), 400),
    ('infinity', 'POST', PREDICT, _raw_image('Infinity'), 400),
    ('minus-infinity', 'POST', PREDICT, _raw_image('-Infinity'), 400),
    ('huge-float-1e39', 'POST', PREDICT, _raw_image('1e39'), 400),
    ('huge-negative-float', 'POST', PREDICT, _raw_image('-1e39'), 400),
    ('huge-pixel-1e30', 'POST', PREDICT, _raw_image('1' + '0' * 30), 400),  # > int64, > 255
    ('batch-over-limit', 'POST', PREDICT, _json({'instances': [IMAGE] * (MAX_BATCH + 1)}), 400),
    ('body-over-limit', 'POST', PREDICT,
     b'{"instances": [' + b'0,' * (MAX_BODY // 2) + b'0]}', 413),
    ('unknown-signature', 'POST', PREDICT, _json({'signature_name': 'nope', 'instances': [IMAGE]}),
     400),
    ('signature-not-a-string', 'POST', PREDICT, _json({'signature_name': 7, 'instances': [IMAGE]}),
     400),
    ('classify-a-predict-signature', 'POST', f'/v1/models/{MODEL_NAME}:classify',
     _json({'examples': [{'image': [0] * 784}]}), 400),
    ('classify-examples-not-a-list', 'POST', f'/v1/models/{MODEL_NAME}:classify',
     _json({'signature_name': 'serving_tf_example', 'examples': 3}), 400),
    ('bad-base64', 'POST', PREDICT,
     _json({'signature_name': 'serving_tf_example', 'instances': [{'b64': '***'}]}), 400),
    ('unknown-verb', 'POST', f'/v1/models/{MODEL_NAME}:explode', _json({'instances': [IMAGE]}),
     400),
    ('unknown-api-version', 'POST', f'/v2/models/{MODEL_NAME}:predict', b'{}', 404),
    ('get-on-predict', 'GET', PREDICT, None, 400),
    ('delete-on-status', 'DELETE', f'/v1/models/{MODEL_NAME}', None, 400),
    ('unknown-model', 'POST', '/v1/models/nope:predict', _json({'instances': [IMAGE]}), 404),
    ('traversal-in-name-encoded', 'POST', '/v1/models/..%2F..%2Fetc%2Fpasswd:predict',
     _json({'instances': [IMAGE]}), 404),
    ('traversal-in-name-raw', 'POST', '/v1/models/../../etc/passwd:predict',
     _json({'instances': [IMAGE]}), 400),
    ('traversal-in-status', 'GET', '/v1/models/..%2F..%2F..%2Fetc', None, 404),
    ('traversal-in-metadata', 'GET', f'/v1/models/{MODEL_NAME}%2F..%2F..%2Fx/metadata', None, 404),
    ('nul-in-name', 'POST', '/v1/models/mn%00ist:predict', _json({'instances': [IMAGE]}), 404),
    ('traversal-in-version', 'POST', f'/v1/models/{MODEL_NAME}/versions/..%2F..%2F1:predict',
     _json({'instances': [IMAGE]}), 400),
    ('version-not-a-number', 'POST', f'/v1/models/{MODEL_NAME}/versions/abc:predict',
     _json({'instances': [IMAGE]}), 400),
    ('version-negative', 'POST', f'/v1/models/{MODEL_NAME}/versions/-1:predict',
     _json({'instances': [IMAGE]}), 400),
    ('version-overflow', 'POST', f'/v1/models/{MODEL_NAME}/versions/99999999999999999999:predict',
     _json({'instances': [IMAGE]}), 400),
    ('version-absent', 'POST', f'/v1/models/{MODEL_NAME}/versions/7:predict',
     _json({'instances': [IMAGE]}), 404),
    ('traversal-in-label', 'POST', f'/v1/models/{MODEL_NAME}/labels/..%2F..%2Fetc:predict',
     _json({'instances': [IMAGE]}), 400),
]


@pytest.mark.parametrize('method, path, body, expected', [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_request_gets_a_4xx_error_and_the_server_still_answers(server, good, method, path,
                                                                   body, expected):
  status, answer = call(server.rest_url + path, method=method, raw=body)
  assert status == expected, answer
  assert isinstance(answer, dict) and set(answer) == {'error'} and answer['error'], answer
  good_body, good_answer = good
  assert call(server.rest_url + PREDICT, raw=good_body) == (200, good_answer)


def serving(server) -> int:
  """The version the server answers with now (the policy serves one)."""
  [version] = [v for v, state in process.served_versions(server.rest_url).items()
               if state == 'AVAILABLE']
  return version


def test_there_are_at_least_25_bad_requests():
  assert len(BAD) >= 25 and len({c[0] for c in BAD}) == len(BAD)


def test_a_version_that_fails_to_load_never_replaces_the_working_one(server, good, tmp_path):
  base = server.serving_dir / MODEL_NAME
  working = serving(server)
  real = (base / str(working) / 'saved_model.pb').read_bytes()
  pushed = []
  for name, content in (('garbage', b'this is not a SavedModel'), ('truncated', real[:len(real) // 2])):
    broken = tmp_path / name
    shutil.copytree(base / str(working), broken)
    (broken / 'saved_model.pb').write_bytes(content)
    pushed.append(int(atomic_pusher.push_atomically(str(broken), base).name))
  process.wait_for(lambda: all(process.served_versions(server.rest_url).get(v) == 'END'
                               for v in pushed), timeout=60, what='both broken versions to fail')
  status, body = call(f'{server.rest_url}/v1/models/{MODEL_NAME}')
  by_version = {int(s['version']): s for s in body['model_version_status']}
  assert by_version[working]['state'] == 'AVAILABLE'
  for version in pushed:
    assert by_version[version]['status']['error_message'], by_version[version]
  good_body, good_answer = good
  assert call(server.rest_url + PREDICT, raw=good_body) == (200, good_answer)


CLIENTS = 16
DURATION = 60.0
PUSH_AT = 30.0


def _client(port: int, body: bytes, expected: bytes, stop: threading.Event,
            results: List[Tuple[float, float, str]]) -> None:
  """Predicts back to back on one keep-alive connection: (sent at, seconds, outcome)."""
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  while not stop.is_set():
    start = time.monotonic()
    try:
      connection.request('POST', PREDICT, body=body, headers={'Content-Type': 'application/json'})
      response = connection.getresponse()
      answer = response.read()
      outcome = 'ok' if response.status == 200 and answer == expected else (
          f'{response.status}: {answer[:200]!r}')
    except Exception as e:  # pylint: disable=broad-except
      outcome = repr(e)
      connection.close()
      connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    results.append((start, time.monotonic() - start, outcome))
  connection.close()


def test_16_clients_for_60_seconds_with_a_push_midway(server, good, capsys):
  base = server.serving_dir / MODEL_NAME
  old = serving(server)
  good_body, _ = good
  connection = http.client.HTTPConnection('127.0.0.1', server.rest_port, timeout=30)
  connection.request('POST', PREDICT, body=good_body, headers={'Content-Type': 'application/json'})
  expected_bytes = connection.getresponse().read()
  connection.close()

  stop = threading.Event()
  results: List[Tuple[float, float, str]] = []
  threads = [threading.Thread(target=_client, args=(server.rest_port, good_body, expected_bytes,
                                                    stop, results)) for _ in range(CLIENTS)]
  began = time.monotonic()
  for thread in threads:
    thread.start()
  try:
    time.sleep(PUSH_AT)
    new = int(atomic_pusher.push_atomically(str(base / str(old)), base).name)
    pushed_at = time.monotonic() - began
    process.wait_for(lambda: process.served_versions(server.rest_url).get(new) == 'AVAILABLE',
                     timeout=DURATION - PUSH_AT - 5, what=f'version {new} to load')
    swapped_at = time.monotonic() - began
    time.sleep(max(0.0, DURATION - (time.monotonic() - began)))
  finally:
    stop.set()
    for thread in threads:
      thread.join(timeout=60)
  elapsed = time.monotonic() - began

  failures = [r for r in results if r[2] != 'ok']
  latencies = np.array([r[1] for r in results]) * 1000
  p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
  after_swap = [r for r in results if r[0] - began > swapped_at]
  with capsys.disabled():
    print(f'\n  load: {CLIENTS} clients, {elapsed:.0f} s, {len(results)} requests '
          f'({len(results) / elapsed:.0f}/s), {len(failures)} failed; latency ms p50 {p50:.1f} '
          f'p90 {p90:.1f} p99 {p99:.1f} max {latencies.max():.1f}; version {new} pushed at '
          f'{pushed_at:.1f} s, serving at {swapped_at:.1f} s, {len(after_swap)} requests after')
  assert not failures, failures[:5]
  assert len(results) > CLIENTS * DURATION  # at least one request per client per second
  assert after_swap and process.served_versions(server.rest_url).get(new) == 'AVAILABLE'
  assert process.served_versions(server.rest_url).get(old) == 'END'
  assert server.alive()
