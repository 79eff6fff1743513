"""TF Serving's JSON formats <-> numpy arrays, written for speed on large pixel batches.

A batch of 64 MNIST images is ~50,000 JSON numbers. They go through orjson (when
installed; the standard library otherwise) and one `np.array` call straight to a typed
array, with no per-value Python code. Shapes, dtypes and the b64 convention are checked
the way TF Serving's json_tensor.cc does, with its error messages.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from serving.errors import invalid
from serving.limits import Limits, check_examples

try:
  import orjson
except ImportError:  # pragma: no cover - orjson is in the lock, but stay usable without it
  orjson = None

B64_KEY = 'b64'
BYTES_SUFFIX = '_bytes'       # TF Serving writes outputs named *_bytes as {"b64": ...}
_NUMERIC_KINDS = {'f': 'fiu', 'i': 'iu', 'u': 'iu', 'b': 'b', 'c': 'fiuc'}


def _preview(value: Any, limit: int = 120) -> str:
  """A short rendering of a JSON value for error messages (never the whole body)."""
  def shallow(v: Any, depth: int) -> Any:
    if isinstance(v, list):
      items = [shallow(i, depth + 1) for i in v[:3]] if depth < 4 else ['...']
      return items + (['...'] if len(v) > 3 else [])
    if isinstance(v, dict):
      return {k: shallow(i, depth + 1) for k, i in list(v.items())[:5]} if depth < 4 else '{...}'
    return v
  text = json.dumps(shallow(value, 0), default=str)
  return text if len(text) <= limit else text[:limit] + '...'


def loads(body: bytes) -> Dict[str, Any]:
  """Parses a request body; NaN/Infinity tokens are accepted as TF Serving does."""
  if not body or not body.strip():
    raise invalid('JSON Parse error: The document is empty')
  try:
    doc = orjson.loads(body) if orjson else json.loads(body)
  except ValueError as fast_error:
    try:  # orjson rejects NaN/Infinity; the standard parser takes them
      doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
      raise invalid(f'JSON Parse error: {e if orjson is None else fast_error}') from None
  if not isinstance(doc, dict):
    raise invalid(f'JSON Value: {_preview(doc)} Is not object')
  return doc


def dumps(doc: Any) -> bytes:
  """Serializes numpy arrays directly; falls back to json for NaN/Infinity, like TF Serving."""
  if orjson is not None:
    try:
      if not _has_non_finite(doc):
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
      pass
  return json.dumps(_to_lists(doc), separators=(',', ':')).encode()


def _has_non_finite(doc: Any) -> bool:
  if isinstance(doc, np.ndarray):
    return doc.dtype.kind == 'f' and not np.isfinite(doc).all()
  if isinstance(doc, dict):
    return any(_has_non_finite(v) for v in doc.values())
  if isinstance(doc, list):
    return any(_has_non_finite(v) for v in doc)
  if isinstance(doc, (float, np.floating)):
    return not np.isfinite(doc)
  return False


def _to_lists(doc: Any) -> Any:
  if isinstance(doc, (np.ndarray, np.generic)):
    return doc.tolist()
  if isinstance(doc, dict):
    return {k: _to_lists(v) for k, v in doc.items()}
  if isinstance(doc, list):
    return [_to_lists(v) for v in doc]
  return doc


# --- JSON value -> array ------------------------------------------------------------------

def is_b64(value: Any) -> bool:
  return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


def decode_b64(value: Dict[str, str]) -> bytes:
  try:
    return base64.b64decode(value[B64_KEY], validate=True)
  except (binascii.Error, ValueError):
    raise invalid(f'JSON Value: {_preview(value)} Unable to base64 decode') from None


def _strings(value: Any) -> Tuple[List[bytes], Tuple[int, ...]]:
  """Flattens a nested list of strings / b64 objects, checking it is rectangular."""
  if isinstance(value, str):
    return [value.encode()], ()
  if isinstance(value, dict):
    if not is_b64(value):
      raise invalid(f'JSON Value: {_preview(value)} not formatted correctly for base64 data')
    return [decode_b64(value)], ()
  if not isinstance(value, list):
    raise invalid(f'JSON Value: {_preview(value)} Type: {type(value).__name__} is not of '
                  f'expected type: string')
  flat: List[bytes] = []
  inner: Optional[Tuple[int, ...]] = None
  for item in value:
    values, shape = _strings(item)
    if inner is not None and shape != inner:
      raise invalid(f'Encountered list at unexpected size or depth in {_preview(value)}')
    inner = shape
    flat.extend(values)
  return flat, (len(value),) + (inner or ())


def to_array(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
  """A JSON value (nested lists) as an array of the signature's dtype, or a 400."""
  if dtype.kind == 'O':
    try:
      flat, shape = _strings(value)
    except RecursionError:
      raise invalid(f'Input "{name}": lists nested too deeply') from None
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)
  try:
    array = np.array(value)
  except (ValueError, TypeError, RecursionError):
    raise invalid(f'Input "{name}": lists of unequal length or depth, the values must form '
                  f'a dense tensor') from None
  allowed = _NUMERIC_KINDS.get(dtype.kind, dtype.kind)
  if array.dtype.kind not in allowed:
    sample = array.reshape(-1)[:1].tolist()
    raise invalid(f'Input "{name}": JSON Value: {_preview(sample[0] if sample else value)} '
                  f'is not of expected type: {dtype.name}')
  if array.dtype == dtype:
    return array
  if dtype.kind in 'iu':
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
      raise invalid(f'Input "{name}": value out of range for {dtype.name}')
  with np.errstate(over='ignore'):
    converted = array.astype(dtype)
  if dtype.kind == 'f' and array.dtype.kind == 'f':
    overflow = np.isinf(converted) & np.isfinite(array)
    if overflow.any():
      raise invalid(f'Cannot convert JSON value: {array[overflow][0]} to {dtype.name} '
                    f'without loss of precision.')
  return converted


# --- predict ------------------------------------------------------------------------------

JsonCheck = Callable[[Mapping[str, Any]], None]


def predict_inputs(doc: Mapping[str, Any], inputs: Mapping[str, np.dtype],
                   check: Optional[JsonCheck] = None) -> Tuple[Dict[str, np.ndarray], bool]:
  """Tensors from `instances` (row format) or `inputs` (columnar); returns (tensors, is_row).

  `check` sees each input's JSON value before any array is built (declared sizes)."""
  if 'instances' in doc and 'inputs' in doc:
    raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                  "keys to exist")
  if 'instances' in doc:
    values, row_format = _rows(doc['instances'], inputs), True
  elif 'inputs' in doc:
    values, row_format = _columns(doc['inputs'], inputs), False
  else:
    raise invalid("Missing 'inputs' or 'instances' key")
  if check:
    check(values)
  return {name: to_array(values[name], dtype, name) for name, dtype in inputs.items()}, row_format


def _is_named(value: Any) -> bool:
  return isinstance(value, dict) and not is_b64(value)


def _rows(instances: Any, inputs: Mapping[str, np.dtype]) -> Dict[str, Any]:
  """Each input's JSON value, still nested lists."""
  if not isinstance(instances, list):
    raise invalid("Excepting 'instances' to be an list/array")
  if not instances:
    raise invalid("No values in 'instances' array")
  if not _is_named(instances[0]):
    if len(inputs) > 1:
      raise invalid('instances is a plain list, but expecting list of objects as multiple '
                    'input tensors required as per tensorinfo_map')
    if any(_is_named(item) for item in instances):
      raise invalid("Expecting value/list but got object in 'instances' list")
    return {next(iter(inputs)): instances}
  keys = set(inputs)
  for i, item in enumerate(instances):
    if not _is_named(item):
      raise invalid(f'Expecting object but got list at item {i} of input list')
    if set(item) != keys:
      raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"keys must be equal to: {','.join(sorted(keys))}")
  return {name: [item[name] for item in instances] for name in inputs}


def _columns(value: Any, inputs: Mapping[str, np.dtype]) -> Dict[str, Any]:
  if not _is_named(value):
    if len(inputs) > 1:
      raise invalid('inputs is a plain value/list, but expecting an object as multiple '
                    'input tensors required as per tensorinfo_map')
    return {next(iter(inputs)): value}
  for name in inputs:
    if name not in value:
      raise invalid(f"Missing named input: {name} in 'inputs' object.")
  return {name: value[name] for name in inputs}


def _json_ready(name: str, array: np.ndarray) -> Any:
  """Numeric arrays pass through (orjson writes them); strings become str or b64."""
  if array.dtype.kind not in 'OSU':
    return array
  as_b64 = name.endswith(BYTES_SUFFIX)
  def convert(item: Any) -> Any:
    if isinstance(item, list):
      return [convert(i) for i in item]
    if isinstance(item, bytes):
      return ({B64_KEY: base64.b64encode(item).decode()} if as_b64
              else item.decode('utf-8', errors='replace'))
    return item
  return convert(array.tolist())


def predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
  """`predictions` (one entry per row) or `outputs` (one entry per tensor)."""
  ready = {k: _json_ready(k, v) for k, v in sorted(outputs.items())}
  if not row_format:
    return dumps({'outputs': next(iter(ready.values())) if len(ready) == 1 else ready})
  batch = {v.shape[0] if v.ndim else None for v in outputs.values()}
  if len(batch) != 1 or None in batch:
    raise invalid(f'Tensors have inconsistent or missing batch sizes '
                  f'{ {k: list(v.shape) for k, v in outputs.items()} }; use the columnar '
                  f'"inputs" format for this signature')
  if len(ready) == 1:
    return dumps({'predictions': next(iter(ready.values()))})
  rows = [{k: v[i] for k, v in ready.items()} for i in range(batch.pop())]
  return dumps({'predictions': rows})


# --- classify / regress -------------------------------------------------------------------

def _feature(name: str, value: Any) -> Any:
  from tensorflow.core.example import feature_pb2  # pylint: disable=import-outside-toplevel
  values = value if isinstance(value, list) else [value]
  kinds = set()
  for v in values:
    if isinstance(v, bool) or (isinstance(v, int) and not isinstance(v, bool)):
      kinds.add('int64')
    elif isinstance(v, float):
      kinds.add('float')
    elif isinstance(v, str) or is_b64(v):
      kinds.add('bytes')
    else:
      raise invalid(f'Feature: {name} has element with unexpected JSON type: '
                    f'{type(v).__name__}')
  if len(kinds) > 1:
    raise invalid(f'Unexpected element type in feature: {name} expecting type: '
                  f'{sorted(kinds)[0]}')
  kind = kinds.pop() if kinds else 'int64'
  if kind == 'int64':
    try:
      return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))
    except ValueError:
      raise invalid(f'Feature: {name} has an element out of the int64 range') from None
  if kind == 'float':
    return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))
  return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
      value=[decode_b64(v) if is_b64(v) else v.encode() for v in values]))


def _example(obj: Any) -> bytes:
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  if not isinstance(obj, dict):
    raise invalid(f'Example must be JSON object but got JSON {type(obj).__name__}')
  example = example_pb2.Example()
  for name, value in obj.items():
    example.features.feature[name].CopyFrom(_feature(name, value))
  return example.SerializeToString()


def examples(doc: Mapping[str, Any], limits: Limits = Limits()) -> List[bytes]:
  """Serialized tf.Examples from `examples` (+ `context`, merged into each like TF Serving);
  the merged size is checked against the limits before the context is copied."""
  if 'examples' not in doc:
    raise invalid("When method is classify, key 'examples' is expected and was not found")
  items = doc['examples']
  if not isinstance(items, list):
    raise invalid("Expecting 'examples' value to be an list/array")
  if not items:
    raise invalid("'examples' value is an empty array")
  context = _example(doc['context']) if 'context' in doc else b''
  serialized = [_example(item) for item in items]
  check_examples(len(serialized), sum(map(len, serialized)), len(context), limits)
  # Concatenated serialized protos merge; an example's own features win over the context.
  return [context + item for item in serialized] if context else serialized


def classify_response(classes: Optional[np.ndarray], scores: Optional[np.ndarray]) -> bytes:
  shape = (classes if classes is not None else scores).shape
  labels = (classes.tolist() if classes is not None else [[b''] * shape[1]] * shape[0])
  values = scores.tolist() if scores is not None else [[0.0] * shape[1]] * shape[0]
  results = [[[label.decode('utf-8', errors='replace'), score]
              for label, score in zip(row_labels, row_scores)]
             for row_labels, row_scores in zip(labels, values)]
  if scores is not None and scores.dtype == np.float32:   # print float32, not its double
    results = [[[label, np.float32(score)] for label, score in row] for row in results]
  return dumps({'results': results})


def regress_response(values: np.ndarray) -> bytes:
  return dumps({'results': values})


def signature_name(doc: Mapping[str, Any]) -> str:
  name = doc.get('signature_name', '')
  if not isinstance(name, str):
    raise invalid(f"JSON Value: {_preview(doc)} not formatted correctly. 'signature_name' "
                  f"key must be a string value.")
  return name
