"""TF Serving's JSON conventions in codec: formats, b64, dtype/shape errors, output writing."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.serving.helpers import bad_request_message
from serving import codec

FLOAT = np.dtype(np.float32)
STRING = np.dtype(object)


def test_row_format_single_input_batches_the_instances():
  tensors, row = codec.predict_inputs({'instances': [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]},
                                      {'x': FLOAT})
  assert row is True
  assert tensors['x'].dtype == np.float32 and tensors['x'].shape == (2, 2, 2)


def test_row_format_named_inputs():
  doc = {'instances': [{'a': [1, 2], 'b': 'x'}, {'a': [3, 4], 'b': {'b64': 'eQ=='}}]}
  tensors, _ = codec.predict_inputs(doc, {'a': np.dtype(np.int64), 'b': STRING})
  np.testing.assert_array_equal(tensors['a'], [[1, 2], [3, 4]])
  assert tensors['b'].tolist() == [b'x', b'y']
  assert 'keys must be equal to: a,b' in bad_request_message(
      lambda: codec.predict_inputs({'instances': [{'a': [1, 2]}]},
                                   {'a': np.dtype(np.int64), 'b': STRING}))


def test_columnar_format():
  tensors, row = codec.predict_inputs({'inputs': {'a': [[1.5]], 'extra': 1}}, {'a': FLOAT})
  assert row is False and tensors['a'].shape == (1, 1)
  tensors, _ = codec.predict_inputs({'inputs': [{'b64': base64.b64encode(b'\0\1').decode()}]},
                                    {'s': STRING})
  assert tensors['s'].tolist() == [b'\0\1']


@pytest.mark.parametrize('doc, message', [
    ({'instances': [[1, 2], [3]]}, 'dense tensor'),
    ({'instances': [[1, 'a']]}, 'not of expected type'),
    ({'instances': [[1, None]]}, 'not of expected type'),
    ({'instances': [True, False]}, 'not of expected type'),
    ({'instances': [{'b64': 'AA=='}]}, 'not of expected type'),
    ({'instances': [1e39]}, 'without loss of precision'),
    ({'inputs': 1, 'instances': [1]}, "only one of 'inputs' or 'instances'"),
    ({'instances': {'x': 1}}, 'list/array'),
    ({}, "Missing 'inputs' or 'instances' key"),
])
def test_float_input_errors(doc, message):
  assert message in bad_request_message(lambda: codec.predict_inputs(doc, {'x': FLOAT}))


@pytest.mark.parametrize('value, message', [
    ([{'b64': '!!'}], 'Unable to base64 decode'),
    ([{'b64': 'AA==', 'other': 1}], 'not formatted correctly for base64'),
    ([1], 'not of expected type: string'),
    ([['a'], 'b'], 'unexpected size or depth'),
])
def test_string_input_errors(value, message):
  assert message in bad_request_message(lambda: codec.predict_inputs({'inputs': value}, {'s': STRING}))


def test_integer_inputs_reject_floats_and_overflow():
  int32 = np.dtype(np.int32)
  assert 'not of expected type' in bad_request_message(
      lambda: codec.predict_inputs({'instances': [1.5]}, {'i': int32}))
  assert 'out of range' in bad_request_message(
      lambda: codec.predict_inputs({'instances': [2 ** 40]}, {'i': int32}))


def test_loads_accepts_nan_and_rejects_non_objects():
  doc = codec.loads(b'{"instances": [NaN, Infinity, -Infinity, 1e-3]}')
  assert np.isnan(doc['instances'][0]) and doc['instances'][2] == -np.inf
  assert 'document is empty' in bad_request_message(lambda: codec.loads(b'  '))
  assert 'Is not object' in bad_request_message(lambda: codec.loads(b'[1]'))
  assert 'JSON Parse error' in bad_request_message(lambda: codec.loads(b'{"a": }'))
  assert 'JSON Parse error' in bad_request_message(lambda: codec.loads(b'[' * 100000))


def test_signature_name_must_be_a_string():
  assert codec.signature_name({}) == ''
  assert "'signature_name' key must be a string" in bad_request_message(
      lambda: codec.signature_name({'signature_name': 1}))


def test_predict_response_formats():
  outputs = {'classes': np.array([3, 4]), 'probabilities': np.array([[0.1, 0.9], [1.0, 0.0]],
                                                                     np.float32)}
  rows = json.loads(codec.predict_response(outputs, row_format=True))
  assert rows == {'predictions': [{'classes': 3, 'probabilities': [0.1, 0.9]},
                                  {'classes': 4, 'probabilities': [1.0, 0.0]}]}
  columns = json.loads(codec.predict_response(outputs, row_format=False))
  assert columns == {'outputs': {'classes': [3, 4], 'probabilities': [[0.1, 0.9], [1.0, 0.0]]}}
  single = json.loads(codec.predict_response({'y': np.array([1.5, 2.5], np.float32)}, True))
  assert single == {'predictions': [1.5, 2.5]}


def test_float32_outputs_round_trip_exactly():
  values = np.random.default_rng(0).random((4, 10), dtype=np.float32)
  decoded = json.loads(codec.predict_response({'p': values}, row_format=False))['outputs']
  np.testing.assert_array_equal(np.array(decoded, np.float32), values)


def test_string_outputs_and_bytes_suffix():
  outputs = {'label': np.array([b'cat', b'dog'], dtype=object),
             'image_bytes': np.array([b'\xff\x00', b'ok'], dtype=object)}
  body = json.loads(codec.predict_response(outputs, row_format=False))['outputs']
  assert body['label'] == ['cat', 'dog']
  assert body['image_bytes'] == [{'b64': '/wA='}, {'b64': 'b2s='}]


def test_non_finite_outputs_are_written_as_tf_serving_does():
  body = codec.predict_response({'y': np.array([np.nan, np.inf, 1.0], np.float32)}, True)
  assert b'NaN' in body and b'Infinity' in body
  assert np.isnan(json.loads(body)['predictions'][0])


def test_examples_with_context_and_feature_kinds():
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  serialized = codec.examples({'context': {'c': 1.5, 'shared': 'ctx'},
                               'examples': [{'i': [1, 2], 's': {'b64': 'eHk='}, 'shared': 'own'}]})
  example = example_pb2.Example.FromString(serialized[0])
  feature = example.features.feature
  assert list(feature['i'].int64_list.value) == [1, 2]
  assert list(feature['s'].bytes_list.value) == [b'xy']
  assert list(feature['c'].float_list.value) == [1.5]
  assert list(feature['shared'].bytes_list.value) == [b'own']   # the example's own wins
  for doc, message in [({}, "'examples'"), ({'examples': {}}, 'list/array'),
                       ({'examples': []}, 'empty array'), ({'examples': [1]}, 'JSON object'),
                       ({'examples': [{'x': [1, 'a']}]}, 'Unexpected element type'),
                       ({'examples': [{'x': None}]}, 'unexpected JSON type')]:
    assert message in bad_request_message(lambda doc=doc: codec.examples(doc))


def test_classify_response():
  body = json.loads(codec.classify_response(np.array([[b'a', b'b']], dtype=object),
                                            np.array([[0.25, 0.75]], np.float32)))
  assert body == {'results': [[['a', 0.25], ['b', 0.75]]]}
