"""Serving benchmark: REST and gRPC against the same SavedModel called in-process.

One run measures predict latency (p50/p99) and throughput for batch 1 and batch 64 over
REST (JSON, keep-alive connection), gRPC (official stub) and in-process
(`signatures['serving_default']`), each from a single sequential client, and prints the
overheads next to the targets. Client-side costs are included: encoding the request,
decoding the answer. The JSON costs for a batch of 64 are also timed on their own.

  .venv/bin/python benchmarks/serving_bench.py                  # builds a small model (~30 s)
  .venv/bin/python benchmarks/serving_bench.py --model-dir outputs/serving   # a pushed model
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import logs  # pylint: disable=wrong-import-position

if __name__ == '__main__':  # the program itself, before TensorFlow is imported below
  logs.quiet()

# pylint: disable=wrong-import-position
import argparse
import contextlib
import http.client
import json
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from trainer import idx
from pipeline import configs
from serving import codec, process
from trainer import features

TARGETS = {'rest_b1_ms': 1.5, 'grpc_b1_ms': 1.0, 'rest_b64_throughput_ratio': 0.5}


def percentile(samples: List[float], q: float) -> float:
  ordered = sorted(samples)
  return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(calls: Dict[str, Callable[[], object]], iterations: int,
            warmup: int) -> Dict[str, Dict[str, float]]:
  """Times the paths interleaved, one call of each per round, so a neighbour's load on the
  machine hits every path alike instead of whichever happened to run at the time."""
  for call in calls.values():
    for _ in range(warmup):
      call()
  times: Dict[str, List[float]] = {name: [] for name in calls}
  for _ in range(iterations):
    for name, call in calls.items():
      t0 = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - t0)
  return {name: {'p50': percentile(t, 50) * 1e3, 'p99': percentile(t, 99) * 1e3,
                 'calls_per_s': len(t) / sum(t)} for name, t in times.items()}


def time_one(call: Callable[[], object], iterations: int) -> float:
  return measure({'x': call}, iterations, 3)['x']['p50']


def in_process_call(model_path: Path, images: np.ndarray) -> Callable[[], object]:
  signature = tf.saved_model.load(str(model_path)).signatures[features.SERVING_DEFAULT]
  pixels = images.astype(np.float32)
  def call() -> Dict[str, np.ndarray]:
    outputs = signature(**{features.PIXELS_INPUT: tf.constant(pixels)})
    return {k: v.numpy() for k, v in outputs.items()}
  return call


def _rest_call(port: int, encode: Callable[[], bytes],
               decode: Callable[[bytes], object]) -> Callable[[], object]:
  connection = http.client.HTTPConnection('127.0.0.1', port)
  def call() -> object:
    connection.request('POST', '/v1/models/mnist:predict', body=encode(),
                       headers={'Content-Type': 'application/json'})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
      raise RuntimeError(payload)
    return decode(payload)
  return call


def rest_call(port: int, images: np.ndarray) -> Callable[[], object]:
  """What serving.client sends: the standard library's JSON."""
  pixels = images.tolist()
  return _rest_call(port, lambda: json.dumps({'instances': pixels}).encode(), json.loads)


def rest_orjson_call(port: int, images: np.ndarray) -> Callable[[], object]:
  """The same request, encoded by orjson straight from the numpy array."""
  import orjson  # pylint: disable=import-outside-toplevel
  return _rest_call(
      port, lambda: orjson.dumps({'instances': images}, option=orjson.OPT_SERIALIZE_NUMPY),
      orjson.loads)


def grpc_call(target: str, images: np.ndarray) -> Callable[[], object]:
  stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
  pixels = images.astype(np.float32)
  def call() -> Dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = 'mnist'
    request.inputs[features.PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(pixels))
    response = stub.Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
  return call


def json_costs(images: np.ndarray, iterations: int = 50) -> Dict[str, float]:
  """Where REST time goes for a batch: the client's json.dumps, the server's decode."""
  pixels = images.tolist()
  body = json.dumps({'instances': pixels}).encode()
  dtypes = {features.PIXELS_INPUT: np.dtype(np.float32)}
  def encode() -> bytes:
    return json.dumps({'instances': images.tolist()}).encode()
  def decode() -> object:
    return codec.predict_inputs(codec.loads(body), dtypes)
  def stdlib_decode() -> object:
    return np.array(json.loads(body)['instances'], np.float32)
  return {'body_kb': len(body) / 1024,
          'client_encode_ms': time_one(encode, iterations),
          'server_decode_ms': time_one(decode, iterations),
          'naive_decode_ms': time_one(stdlib_decode, iterations)}


def build_model(work: Path) -> Path:
  """The tests' small real model (~30 s); Keras's progress goes to stderr, not the report."""
  from tests.model_factory import build_serving_model  # pylint: disable=import-outside-toplevel
  train = idx.load_source(configs.SHARED_DATA_DIR, 'train', 2000)
  with contextlib.redirect_stdout(sys.stderr):
    build_serving_model(work / 'mnist' / '1', train.images, train.labels)
  return work


def latest_version(serving_dir: Path) -> Path:
  base = serving_dir / 'mnist'
  versions = sorted((int(p.name), p) for p in base.iterdir() if p.name.isdigit())
  if not versions:
    raise SystemExit(f'no version folders under {base}')
  return versions[-1][1]


def run(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
  work = Path(tempfile.mkdtemp(prefix='serving-bench-'))
  serving_dir = Path(args.model_dir) if args.model_dir else build_model(work)
  model_path = latest_version(serving_dir)
  data = idx.load_source(configs.SHARED_DATA_DIR, 'test', 64)
  results: Dict[str, Dict[str, float]] = {}
  server = process.start_server(serving_dir, 'mnist')
  try:
    for batch, iterations in ((1, args.iterations), (64, max(args.iterations // 4, 20))):
      images = data.images[:batch]
      calls = {'in-process': in_process_call(model_path, images),
               'REST': rest_call(server.rest_port, images),
               'REST (orjson client)': rest_orjson_call(server.rest_port, images),
               'gRPC': grpc_call(server.grpc_target, images)}
      for name, stats in measure(calls, iterations, args.warmup).items():
        stats['images_per_s'] = stats['calls_per_s'] * batch
        results[f'{name} b{batch}'] = stats
    results['json b64'] = json_costs(data.images[:64])
  finally:
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
  return results


def report(results: Dict[str, Dict[str, float]]) -> str:
  lines = ['| path | batch | p50 ms | p99 ms | images/s | p50 vs in-process | throughput vs in-process |',
           '|---|---|---|---|---|---|---|']
  for batch in (1, 64):
    base = results[f'in-process b{batch}']
    for name in ('in-process', 'REST', 'REST (orjson client)', 'gRPC'):
      r = results[f'{name} b{batch}']
      lines.append(f'| {name} | {batch} | {r["p50"]:.2f} | {r["p99"]:.2f} | '
                   f'{r["images_per_s"]:.0f} | {r["p50"] - base["p50"]:+.2f} ms '
                   f'(x{r["p50"] / base["p50"]:.2f}) | '
                   f'x{r["images_per_s"] / base["images_per_s"]:.2f} |')
  j = results['json b64']
  lines.append('')
  lines.append(f'JSON for a batch of 64 ({j["body_kb"]:.0f} KB body): client json.dumps '
               f'{j["client_encode_ms"]:.2f} ms; server decode to float32 (orjson + np.array) '
               f'{j["server_decode_ms"]:.2f} ms vs json.loads + np.array '
               f'{j["naive_decode_ms"]:.2f} ms.')
  rest1 = results['REST b1']['p50'] - results['in-process b1']['p50']
  grpc1 = results['gRPC b1']['p50'] - results['in-process b1']['p50']
  ratio = results['REST b64']['images_per_s'] / results['in-process b64']['images_per_s']
  lines.append('')
  lines.append('Targets:')
  for label, value, target, ok in [
      ('REST batch-1 p50 above in-process', f'{rest1:+.2f} ms', f'<= {TARGETS["rest_b1_ms"]} ms',
       rest1 <= TARGETS['rest_b1_ms']),
      ('gRPC batch-1 p50 above in-process', f'{grpc1:+.2f} ms', f'<= {TARGETS["grpc_b1_ms"]} ms',
       grpc1 <= TARGETS['grpc_b1_ms']),
      ('REST batch-64 throughput / in-process', f'x{ratio:.2f}',
       f'>= x{TARGETS["rest_b64_throughput_ratio"]}', ratio >= TARGETS['rest_b64_throughput_ratio'])]:
    lines.append(f'- {label}: {value} (target {target}): {"met" if ok else "MISSED"}')
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model-dir', help='a serving dir holding mnist/<version>/ '
                      '(default: build a small model first)')
  parser.add_argument('--iterations', type=int, default=400,
                      help='timed calls per path at batch 1 (a quarter of it at batch 64)')
  parser.add_argument('--warmup', type=int, default=20)
  parser.add_argument('--json', action='store_true', help='also print the raw figures as JSON')
  args = parser.parse_args(argv)
  results = run(args)
  print(report(results))
  if args.json:
    print(json.dumps(results, indent=1))


if __name__ == '__main__':
  main()
