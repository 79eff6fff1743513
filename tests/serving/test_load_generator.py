"""The batching benchmark's C load generator (h2load): what it sends is a real gRPC / REST
predict, and every request it counts was answered OK by the server."""

from __future__ import annotations

import json
import struct

import pytest
from tensorflow_serving.apis import predict_pb2

from benchmarks import batching_bench, h2load
from tests import debian

H2LOAD = '/usr/bin/h2load'
INSTALL = (['apt-get', 'update'], ['apt-get', 'install', '-y', 'nghttp2-client'])


@pytest.fixture(scope='module')
def h2load_installed() -> str:
  return debian.ensure_installed(H2LOAD, INSTALL, 'load generator tests', print)


def _checked_h2load(server, url: str, body: bytes, headers, http1: bool = False) -> None:
  batching_bench.measured(server, batching_bench.h2load_load(url, body, headers, 2, http1), 0.3,
                          check=True)


def test_grpc_body_is_one_length_prefixed_message(mnist_test):
  request = batching_bench.predict_request(mnist_test.images[0])
  body = h2load.grpc_body(request)
  compressed, length = body[0], struct.unpack('>I', body[1:5])[0]
  assert (compressed, length) == (0, len(body) - 5)
  assert predict_pb2.PredictRequest.FromString(body[5:]) == request


def test_h2load_drives_grpc_and_rest_with_every_answer_ok(h2load_installed, server, mnist_test):
  for protocol in ('gRPC', 'REST'):
    phase = batching_bench.h2load_phase(server, protocol, mnist_test.images[0], clients=4)
    result, _, _ = batching_bench.measured(server, phase, 1.0, check=True)
    assert len(result['latencies']) > 20, protocol
    assert all(0 < t < 5 for t in result['latencies']), protocol


def test_h2load_failures_are_not_counted_as_answers(h2load_installed, server, mnist_test):
  # gRPC answers an error with HTTP 200 (the status is in the trailers): only the server's
  # request counters tell that version 99 was not found.
  request = batching_bench.predict_request(mnist_test.images[0])
  request.model_spec.version.value = 99
  url = f'http://{server.grpc_target}{h2load.PREDICT_PATH}'
  with pytest.raises(RuntimeError, match=r"the server answered .*'failed': [1-9]"):
    _checked_h2load(server, url, h2load.grpc_body(request), h2load.GRPC_HEADERS)
  # REST says it in the HTTP status.
  url = f'{server.rest_url}/v1/models/mnist:predict'
  with pytest.raises(RuntimeError, match=r'0 succeeded, [1-9]\d* failed.*0 2xx.*[1-9]\d* 4xx'):
    _checked_h2load(server, url, json.dumps({'instances': 'no'}).encode(), h2load.REST_HEADERS,
                    http1=True)
