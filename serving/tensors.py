"""TF Serving's request protos -> numpy, with the declared sizes checked before decoding.

Shared by the gRPC front end and the warm-up replay, which read the same PredictRequest,
ClassificationRequest and RegressionRequest messages.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid
from serving.limits import Limits, check_bytes, check_examples, check_tensor_proto
from serving.servable import Signature, check_input_names

_FAST_DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
                np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64}
_FAST_NUMPY = {enum: dtype for dtype, enum in _FAST_DTYPES.items()}


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
  """Raw tensor_content of the common dtypes is viewed directly (its size was checked);
  anything else goes through TensorFlow's helper."""
  dtype, content = _FAST_NUMPY.get(proto.dtype), proto.tensor_content   # a copy per read
  if dtype is not None and content:
    return np.frombuffer(content, dtype).reshape([d.size for d in proto.tensor_shape.dim])
  try:
    return tf.make_ndarray(proto)
  except Exception as e:  # pylint: disable=broad-except
    raise invalid(f'Cannot parse input tensor: {e}') from None


def to_tensor_proto(array: np.ndarray, out: Optional[tensor_pb2.TensorProto] = None
                    ) -> tensor_pb2.TensorProto:
  """Numeric arrays as raw tensor_content (fast); strings through TensorFlow's helper.
  Written into `out` (e.g. a response's map entry, saving a copy) when given."""
  out = tensor_pb2.TensorProto() if out is None else out
  dtype = _FAST_DTYPES.get(array.dtype)
  if dtype is None:
    out.CopyFrom(tf.make_tensor_proto(array))
    return out
  out.dtype = dtype
  for size in array.shape:
    out.tensor_shape.dim.add(size=size)
  out.tensor_content = np.ascontiguousarray(array).tobytes()
  return out


def checked_size(sig: Signature, protos: Mapping[str, tensor_pb2.TensorProto],
                 limits: Limits) -> int:
  """A PredictRequest's inputs' decoded size in bytes, once every declared name, dtype,
  shape and size has passed (read from the headers: nothing is decoded)."""
  names = list(protos)   # the map's own iterator (its items() view is a slow Python one)
  check_input_names(sig, names)
  total = 0
  for name in names:
    info = sig.inputs[name]
    total += check_tensor_proto(name, protos[name], info.datatype, info.shape, limits)
  check_bytes(f'The {len(names)} inputs', total, limits)
  return total


def decoded(protos: Mapping[str, tensor_pb2.TensorProto]) -> Dict[str, np.ndarray]:
  """Inputs whose `checked_size` passed, as arrays."""
  return {name: to_ndarray(protos[name]) for name in protos}


def predict_inputs(sig: Signature, protos: Mapping[str, tensor_pb2.TensorProto],
                   limits: Limits) -> Dict[str, np.ndarray]:
  """A PredictRequest's inputs as arrays, once every declared shape and size has passed."""
  checked_size(sig, protos, limits)
  return decoded(protos)


def examples(request_input: Any, limits: Limits) -> List[bytes]:
  """Serialized tf.Examples of an Input proto; context features are merged into each,
  so the context's size is counted once per example before anything is copied."""
  kind = request_input.WhichOneof('kind')
  if kind == 'example_list':
    items = request_input.example_list.examples
    check_examples(len(items), request_input.example_list.ByteSize(), 0, limits)
    return [e.SerializeToString() for e in items]
  if kind == 'example_list_with_context':
    with_context = request_input.example_list_with_context
    items = with_context.examples
    check_examples(len(items), sum(e.ByteSize() for e in items), with_context.context.ByteSize(),
                   limits)
    context = with_context.context.SerializeToString()
    return [context + e.SerializeToString() for e in items]
  raise invalid('Input is empty.')
