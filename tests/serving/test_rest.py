"""The REST API against a real server process: TF Serving's formats, answers equal to the
in-process SavedModel, versions and labels, classify, and the error cases."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from components.mnist_example_gen.encoding import to_example
from tests.serving.conftest import MAX_BATCH, MAX_BODY, reference_predict
from tests.serving.helpers import call
from trainer import features


def model_url(server, suffix: str = '') -> str:
  return f'{server.rest_url}/v1/models/mnist{suffix}'


def assert_matches(predictions: dict, expected: dict) -> None:
  np.testing.assert_array_equal(np.array(predictions[features.CLASSES_OUTPUT]),
                                expected[features.CLASSES_OUTPUT])
  np.testing.assert_array_equal(
      np.array(predictions[features.PROBABILITIES_OUTPUT], np.float32),
      expected[features.PROBABILITIES_OUTPUT])


def rows_to_columns(rows: list) -> dict:
  return {key: [row[key] for row in rows] for key in rows[0]}


def test_status_lists_both_versions_newest_first(server):
  status, body = call(model_url(server))
  assert status == 200
  assert body == {'model_version_status': [
      {'version': v, 'state': 'AVAILABLE', 'status': {'error_code': 'OK', 'error_message': ''}}
      for v in ('2', '1')]}


@pytest.mark.parametrize('suffix, version', [('/versions/1', '1'), ('/labels/stable', '1'),
                                             ('/labels/canary', '2')])
def test_status_of_one_version(server, suffix, version):
  status, body = call(model_url(server, suffix))
  assert status == 200
  assert [s['version'] for s in body['model_version_status']] == [version]


def test_metadata_has_model_spec_and_signature_defs(server):
  status, body = call(model_url(server, '/metadata'))
  assert status == 200
  assert body['model_spec'] == {'name': 'mnist', 'signature_name': '', 'version': '2'}
  defs = body['metadata']['signature_def']['signature_def']
  pixels = defs[features.SERVING_DEFAULT]
  assert pixels['method_name'] == 'tensorflow/serving/predict'
  image = pixels['inputs'][features.PIXELS_INPUT]
  assert image['dtype'] == 'DT_FLOAT'
  assert [d['size'] for d in image['tensor_shape']['dim']] == ['-1', '28', '28']
  assert set(pixels['outputs']) == {features.PROBABILITIES_OUTPUT, features.CLASSES_OUTPUT}
  assert pixels['outputs'][features.CLASSES_OUTPUT]['dtype'] == 'DT_INT64'
  examples = defs[features.SERVING_TF_EXAMPLE]
  assert examples['method_name'] == features.CLASSIFY_METHOD_NAME
  assert examples['inputs'][features.EXAMPLES_INPUT]['dtype'] == 'DT_STRING'


def test_metadata_of_a_pinned_version(server):
  status, body = call(model_url(server, '/versions/1/metadata'))
  assert status == 200 and body['model_spec']['version'] == '1'
  status, body = call(model_url(server, '/labels/canary/metadata'))
  assert status == 200 and body['model_spec']['version'] == '2'


def test_predict_row_format_equals_in_process(server, reference, mnist_test):
  images = mnist_test.images[:16]
  status, body = call(model_url(server, ':predict'), {'instances': images.tolist()})
  assert status == 200, body
  assert len(body['predictions']) == 16
  assert_matches(rows_to_columns(body['predictions']), reference_predict(reference, 2, images))


def test_predict_columnar_format_equals_in_process(server, reference, mnist_test):
  images = mnist_test.images[16:48]
  status, body = call(model_url(server, ':predict'),
                      {'signature_name': features.SERVING_DEFAULT, 'inputs': images.tolist()})
  assert status == 200, body
  assert_matches(body['outputs'], reference_predict(reference, 2, images))


def test_predict_named_inputs_and_float_pixels(server, reference, mnist_test):
  images = mnist_test.images[:3].astype(np.float32)
  expected = reference_predict(reference, 2, images)
  status, body = call(model_url(server, ':predict'),
                      {'instances': [{features.PIXELS_INPUT: im.tolist()} for im in images]})
  assert status == 200, body
  assert_matches(rows_to_columns(body['predictions']), expected)
  status, body = call(model_url(server, ':predict'),
                      {'inputs': {features.PIXELS_INPUT: images.tolist()}})
  assert status == 200, body
  assert_matches(body['outputs'], expected)


@pytest.mark.parametrize('suffix, version', [('/versions/1', 1), ('/versions/2', 2),
                                             ('/labels/stable', 1), ('/labels/canary', 2),
                                             ('', 2)])
def test_predict_by_version_and_label(server, reference, mnist_test, suffix, version):
  images = mnist_test.images[:50]
  status, body = call(model_url(server, f'{suffix}:predict'), {'inputs': images.tolist()})
  assert status == 200, body
  assert_matches(body['outputs'], reference_predict(reference, version, images))


def test_versions_really_differ(reference, mnist_test):
  """Guards the routing tests above: v1 and v2 must not give the same answers."""
  one = reference_predict(reference, 1, mnist_test.images)
  two = reference_predict(reference, 2, mnist_test.images)
  assert (one['classes'] != two['classes']).any()
  assert (one['classes'] == mnist_test.labels).mean() > 0.9


def test_classify_tf_examples(server, reference, mnist_test):
  images = mnist_test.images[:5]
  examples = [{features.IMAGE_KEY: im.reshape(-1).tolist()} for im in images]
  status, body = call(model_url(server, '/versions/1:classify'),
                      {'signature_name': features.SERVING_TF_EXAMPLE, 'examples': examples})
  assert status == 200, body
  expected = reference_predict(reference, 1, images)[features.PROBABILITIES_OUTPUT]
  assert len(body['results']) == 5
  for result, probs in zip(body['results'], expected):
    assert [label for label, _ in result] == [str(i) for i in range(features.NUM_CLASSES)]
    np.testing.assert_array_equal(np.array([s for _, s in result], np.float32), probs)


def test_classify_with_context(server, reference, mnist_test):
  """`context` features are merged into every example, as TF Serving does."""
  image = mnist_test.images[7]
  status, body = call(model_url(server, '/versions/1:classify'), {
      'signature_name': features.SERVING_TF_EXAMPLE,
      'context': {features.IMAGE_KEY: image.reshape(-1).tolist()}, 'examples': [{}, {}]})
  assert status == 200, body
  # Same batch size as the request: oneDNN's results depend (in the last bits) on it.
  expected = reference_predict(reference, 1, np.stack([image, image]))
  for result, probs in zip(body['results'], expected[features.PROBABILITIES_OUTPUT]):
    np.testing.assert_array_equal(np.array([s for _, s in result], np.float32), probs)


def test_predict_b64_serialized_examples(server, reference, mnist_test):
  images, labels = mnist_test.images[:4], mnist_test.labels[:4]
  instances = [{'b64': base64.b64encode(to_example(im, lab)).decode()}
               for im, lab in zip(images, labels)]
  status, body = call(model_url(server, '/versions/1:predict'),
                      {'signature_name': features.SERVING_TF_EXAMPLE, 'instances': instances})
  assert status == 200, body
  expected = reference_predict(reference, 1, images)[features.PROBABILITIES_OUTPUT]
  scores = np.array([row[features.CLASSIFY_SCORES_OUTPUT] for row in body['predictions']],
                    np.float32)
  np.testing.assert_array_equal(scores, expected)
  assert body['predictions'][0][features.CLASSIFY_CLASSES_OUTPUT] == [str(i) for i in range(10)]


def test_nan_and_infinity_tokens_parse_but_are_rejected(server):
  image = [[0.0] * 28 for _ in range(28)]
  image[0][0], image[0][1] = 'NaN', 'Infinity'
  raw = ('{"instances": [%s]}' % str(image).replace("'", '')).encode()
  status, body = call(model_url(server, ':predict'), raw=raw)
  assert status == 400 and 'NaN or infinite' in body['error'], body


BAD_REQUESTS = [
    # (url suffix, body or raw bytes, status, text in the error)
    (':predict', b'', 400, 'document is empty'),
    (':predict', b'{"instances": [1, 2', 400, 'JSON Parse error'),
    (':predict', b'[1, 2]', 400, 'Is not object'),
    (':predict', {'instances': [[[0] * 28] * 27]}, 400, 'shape [1,27,28]'),
    (':predict', {'instances': [[['x'] * 28] * 28]}, 400, 'not of expected type'),
    (':predict', {'instances': [[[0] * 28] * 27 + [[0] * 27]]}, 400, 'dense tensor'),
    (':predict', {'instances': [], }, 400, "No values in 'instances'"),
    (':predict', {'instances': 5}, 400, 'list/array'),
    (':predict', {'instances': [[[0] * 28] * 28], 'inputs': [[[0] * 28] * 28]}, 400,
     "only one of 'inputs' or 'instances'"),
    (':predict', {'signature_name': 'nope', 'instances': [[[0] * 28] * 28]}, 400,
     'Serving signature name: "nope" not found'),
    (':predict', {'signature_name': 7, 'instances': [1]}, 400, 'must be a string'),
    (':predict', {'something': 1}, 400, "Missing 'inputs' or 'instances'"),
    (':predict', {'inputs': {'wrong': [[[0] * 28] * 28]}}, 400, 'Missing named input: image'),
    (':predict', {'signature_name': features.SERVING_TF_EXAMPLE,
                  'instances': [{'b64': '***'}]}, 400, 'base64'),
    (':predict', {'signature_name': features.SERVING_TF_EXAMPLE,
                  'instances': [{'b64': base64.b64encode(b'garbage').decode()}]}, 400,
     'Could not parse example'),
    (':classify', {'examples': [{'image': [0] * 784}]}, 400,
     'Expected classification signature method_name'),
    (':classify', {'signature_name': features.SERVING_TF_EXAMPLE}, 400, "'examples'"),
    (':classify', {'signature_name': features.SERVING_TF_EXAMPLE, 'examples': [{'image': [0] * 5}]},
     400, 'image'),
    (':regress', {'signature_name': features.SERVING_TF_EXAMPLE, 'examples': [{'x': 1}]}, 400,
     'regression signature'),
    (':predict', {'instances': [[[0] * 28] * 28] * (MAX_BATCH + 1)}, 400, 'maximum batch size'),
    ('/versions/7:predict', {'instances': [[[0] * 28] * 28]}, 404, 'Specific(mnist, 7)'),
    ('/labels/nope:predict', {'instances': [[[0] * 28] * 28]}, 400,
     'Unrecognized servable version label'),
    ('/versions/99999999999999999999:predict', {'instances': [1]}, 400, 'Failed to convert'),
]


@pytest.mark.parametrize('suffix, body, status, message', BAD_REQUESTS,
                         ids=[f'{i}-{c[3][:25]}' for i, c in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_tf_serving_errors(server, suffix, body, status, message):
  raw = body if isinstance(body, bytes) else None
  got_status, got = call(model_url(server, suffix), None if raw is not None else body, 'POST',
                         raw=raw)
  assert got_status == status, got
  assert set(got) == {'error'} and message in got['error'], got


@pytest.mark.parametrize('method, path, status, message', [
    ('POST', '/v1/models/other:predict', 404, 'Servable not found for request: Latest(other)'),
    ('GET', '/v1/models/other', 404, 'Could not find any versions of model other'),
    ('GET', '/v1/models/mnist/versions/7', 404, 'Could not find version 7 of model mnist'),
    ('GET', '/v1/models/other/metadata', 404, 'Servable not found'),
    ('GET', '/v1/models/mnist:predict', 400, 'Malformed request'),
    ('POST', '/v1/models/mnist/metadata', 400, 'Malformed request'),
    ('GET', '/v1/models', 400, 'Missing model name'),
    ('GET', '/nothing/here', 404, 'Not found'),
])
def test_bad_urls(server, method, path, status, message):
  got_status, got = call(server.rest_url + path, method=method,
                         raw=b'{}' if method == 'POST' else None)
  assert got_status == status, got
  assert message in got['error'], got


def test_body_over_the_limit_is_413(server):
  raw = b'{"instances": [' + b'0,' * (MAX_BODY // 2) + b'0]}'
  status, body = call(model_url(server, ':predict'), raw=raw)
  assert status == 413
  assert 'exceeds' in body['error']


def test_chunked_body_over_the_limit_is_413(server):
  """No Content-Length to check up front: the limit still holds while reading."""
  def chunks():
    yield b'{"instances": ['
    for _ in range(MAX_BODY // 65536 + 2):
      yield b'0,' * 32768
    yield b'0]}'
  import http.client  # pylint: disable=import-outside-toplevel
  connection = http.client.HTTPConnection('127.0.0.1', server.rest_port, timeout=30)
  try:
    connection.request('POST', '/v1/models/mnist:predict', body=chunks(),
                       headers={'Content-Type': 'application/json'}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413, response.read()
  except (BrokenPipeError, ConnectionResetError):
    pass  # the server may close the connection before the client finishes sending
  finally:
    connection.close()


def test_server_survives_bad_requests(server, mnist_test):
  """After every error above, the server still answers correctly."""
  for raw in (b'\xff\xfe', b'{"instances": ' + b'[' * 5000 + b']' * 5000 + b'}',
              b'{"instances": [[' + b'1e999,' * 10 + b'1]]}', b'null'):
    status, body = call(model_url(server, ':predict'), raw=raw)
    assert status == 400, body
  status, body = call(model_url(server, ':predict'), {'instances': mnist_test.images[:1].tolist()})
  assert status == 200 and body['predictions'][0]['classes'] == mnist_test.labels[0]
