"""Declared sizes, checked against the signature and the limits before anything is allocated.

A request states how big its tensors are before it carries their values. A gRPC
TensorProto declares `tensor_shape` and may fill it from a single `float_val` (TensorFlow
repeats the last value), so a 56-byte message can ask for gigabytes; the nesting of a JSON
body, or a tf.Example context merged into every example, does the same for REST and for
Classify/Regress. Both front ends compute that declared size from the message alone,
compare it here, and only then build arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from serving.errors import invalid

DEFAULT_MAX_INPUT_BYTES = 32 * 1024 * 1024   # ~10,000 images as float32
# What one string element costs once decoded, beyond its bytes: a numpy object slot and
# TensorFlow's tstring header (32 bytes).
STRING_ELEMENT_BYTES = 40
DT_STRING = 7   # tensorflow.DataType (types.proto), whose module imports TensorFlow


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask for. No batch cap by default, as TF Serving without batching:
  the decoded size bounds a request instead, so memory, not a count, is the limit."""
  max_batch_size: int = 0                        # 0: no cap
  max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES  # decoded size of one request's inputs


def shape_text(shape: Sequence[Optional[int]]) -> str:
  return '[' + ','.join('-1' if d is None else str(d) for d in shape) + ']'


def check_shape(name: str, shape: Sequence[int], expected: Optional[Sequence[Optional[int]]],
                limits: Limits) -> None:
  """A declared shape against the signature's (None: any size) and the batch cap."""
  if shape and min(shape) < 0:
    raise invalid(f'Input "{name}" declares shape {shape_text(shape)} with a negative dimension')
  if expected is not None and (len(shape) != len(expected) or any(
      want is not None and want != got for want, got in zip(expected, shape))):
    raise invalid(f'Input "{name}" has shape {shape_text(shape)} but the signature expects '
                  f'{shape_text(expected)} (-1: any size)')
  if limits.max_batch_size and shape and shape[0] > limits.max_batch_size:
    raise invalid(f'Batch size {shape[0]} of input "{name}" exceeds the server\'s maximum '
                  f'batch size of {limits.max_batch_size}')


def check_bytes(what: str, size: int, limits: Limits) -> None:
  if size > limits.max_input_bytes:
    raise invalid(f'{what} would take {size} bytes once decoded, over the server\'s limit of '
                  f'{limits.max_input_bytes} bytes (--max-input-bytes)')


def decoded_bytes(shape: Sequence[int], itemsize: int) -> int:
  return math.prod(shape) * itemsize


# --- gRPC: TensorProto -----------------------------------------------------------------------

# Per dtype: the repeated field carrying its values when tensor_content is empty, how many
# entries one element takes there (complex values are pairs), and its size once decoded.
_ENCODINGS_BY_NAME = {
    'DT_FLOAT': ('float_val', 1, 4), 'DT_DOUBLE': ('double_val', 1, 8),
    'DT_INT32': ('int_val', 1, 4), 'DT_INT16': ('int_val', 1, 2), 'DT_INT8': ('int_val', 1, 1),
    'DT_UINT8': ('int_val', 1, 1), 'DT_UINT16': ('int_val', 1, 2),
    'DT_INT64': ('int64_val', 1, 8), 'DT_BOOL': ('bool_val', 1, 1),
    'DT_HALF': ('half_val', 1, 2), 'DT_BFLOAT16': ('half_val', 1, 2),
    'DT_UINT32': ('uint32_val', 1, 4), 'DT_UINT64': ('uint64_val', 1, 8),
    'DT_COMPLEX64': ('scomplex_val', 2, 8), 'DT_COMPLEX128': ('dcomplex_val', 2, 16)}


@functools.lru_cache(maxsize=None)
def _encodings() -> Dict[int, Tuple[str, int, int]]:
  """`_ENCODINGS_BY_NAME` keyed by the DataType enum, as a TensorProto's `dtype` holds it."""
  from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
  return {types_pb2.DataType.Value(name): encoding
          for name, encoding in _ENCODINGS_BY_NAME.items()}


@functools.lru_cache(maxsize=None)
def dtype_name(enum: int) -> str:
  # Imported here: importing any TensorFlow proto imports TensorFlow, which `python -m
  # serving` defers until its flags have parsed.
  from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
  try:
    return types_pb2.DataType.Name(enum)
  except ValueError:
    return f'dtype {enum}'


def check_tensor_proto(name: str, proto: Any, expected_dtype: int,
                       expected_shape: Optional[Sequence[Optional[int]]], limits: Limits) -> int:
  """Checks a TensorProto's declared dtype, shape and size; returns its decoded bytes.

  Reads only the header fields and the lengths of the value fields: nothing is decoded.
  Every request passes here, so each field is read once (a bytes field is copied per read)."""
  dtype = proto.dtype
  if dtype != expected_dtype:
    raise invalid(f'Input "{name}" expects {dtype_name(expected_dtype)} but '
                  f'{dtype_name(dtype)} was provided')
  tensor_shape = proto.tensor_shape
  if tensor_shape.unknown_rank:
    raise invalid(f'Input "{name}" has an unknown rank; a request tensor needs a full shape')
  shape = [d.size for d in tensor_shape.dim]
  check_shape(name, shape, expected_shape, limits)
  elements = math.prod(shape)
  if dtype == DT_STRING:
    values = proto.string_val
    if len(values) > elements:
      raise invalid(f'Input "{name}" carries {len(values)} values for shape '
                    f'{shape_text(shape)} ({elements} elements)')
    longest = max((len(v) for v in values), default=0)
    size = elements * (STRING_ELEMENT_BYTES + longest)
  else:
    field, per_element, itemsize = _encodings().get(dtype, (None, 1, 8))
    size = elements * itemsize
    content_bytes = len(proto.tensor_content)
    if content_bytes:
      if content_bytes != size:
        raise invalid(f'Input "{name}" has {content_bytes} bytes of tensor_content for shape '
                      f'{shape_text(shape)} of {dtype_name(dtype)} ({size} bytes)')
    elif field and len(getattr(proto, field)) > elements * per_element:
      raise invalid(f'Input "{name}" carries {len(getattr(proto, field)) // per_element} '
                    f'values for shape {shape_text(shape)} ({elements} elements)')
  if size > limits.max_input_bytes:   # the message is only built when it is needed
    check_bytes(f'Input "{name}" of shape {shape_text(shape)}', size, limits)
  return size




# --- REST: nested JSON lists ---------------------------------------------------------------

def json_shape(value: Any) -> Tuple[int, ...]:
  """The shape a nested list declares, read down its first elements (no recursion, no
  copies): ragged lists are caught later, when the array is built."""
  shape = []
  while isinstance(value, list):
    shape.append(len(value))
    if not value:
      break
    value = value[0]
  return tuple(shape)


Spec = Tuple[int, Optional[Sequence[Optional[int]]]]   # (decoded bytes per element, shape)


def check_json_inputs(values: Mapping[str, Any], specs: Mapping[str, Spec],
                      limits: Limits) -> None:
  """Checks the shapes and decoded sizes that JSON input values declare."""
  total = 0
  for name, value in values.items():
    itemsize, expected_shape = specs[name]
    shape = json_shape(value)
    check_shape(name, shape, expected_shape, limits)
    size = decoded_bytes(shape, itemsize)
    check_bytes(f'Input "{name}" of shape {shape_text(shape)}', size, limits)
    total += size
  check_bytes(f'The {len(values)} inputs', total, limits)


# --- Classify / Regress: serialized examples -----------------------------------------------

def check_examples(count: int, example_bytes: int, context_bytes: int, limits: Limits) -> None:
  """The context is copied into every example: its size counts once per example."""
  if limits.max_batch_size and count > limits.max_batch_size:
    raise invalid(f'Batch size {count} exceeds the server\'s maximum batch size of '
                  f'{limits.max_batch_size}')
  check_bytes(f'{count} examples', example_bytes + count * (context_bytes + STRING_ELEMENT_BYTES),
              limits)
