"""Server-side batching benchmark: 16 concurrent batch-1 clients, batching off and on.

Two servers run side by side on the same model, one plain and one with
`--enable_batching --batching_parameters_file`. Each client sends one image per request,
back to back, for a fixed time; the phases (clients x gRPC/REST x off/on) are interleaved
in rounds so that background load on the machine hits them alike. Prints throughput,
p50/p99 latency, the mean rows per model call (from the servers' metrics) and the server
process's CPU time per request (from /proc: steadier than throughput on a shared machine).

Two kinds of clients, both by default when h2load is installed: h2load (nghttp2's C load
generator, benchmarks/h2load.py: 16 connections, one request in flight on each, ~50 us of
CPU per request, so the servers are what is measured) and Python threads (the official gRPC
stub, http.client: ~300 us per request under one GIL, what such clients get).

  .venv/bin/python benchmarks/batching_bench.py                  # builds a small model (~30 s)
  .venv/bin/python benchmarks/batching_bench.py --model-dir outputs/serving --seconds 10
  .venv/bin/python benchmarks/batching_bench.py --load h2load    # one kind of client only
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import logs  # pylint: disable=wrong-import-position

logs.quiet()

# pylint: disable=wrong-import-position
import argparse
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks import h2load
from benchmarks.serving_bench import build_model, percentile
from pipeline import configs
from serving import process
from serving.metrics import REQUEST_COUNT
from trainer import features, idx

# TF Serving's batching guide (tensorflow_serving/batching/README.md): for a CPU-only server,
# num_batch_threads = the cores (2 here) and batch_timeout_micros tried in the 1-10 ms range.
# Its advice for synchronous clients (client threads ~2x max_batch_size: batches of 8 for 16
# clients, one filling while the other runs) lost here: the two half-batches fall into one
# wave anyway, and one call on 16 rows costs less CPU per image than two on 8.
# docs/benchmarks.md compares the alternatives.
DEFAULT_PARAMETERS = '''max_batch_size { value: 16 }
batch_timeout_micros { value: 10000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
'''
TARGET_THROUGHPUT_RATIO = 1.5
Call = Callable[[], object]


def predict_request(image: np.ndarray) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'mnist'
  request.inputs[features.PIXELS_INPUT].CopyFrom(
      tf.make_tensor_proto(image[np.newaxis].astype(np.float32)))
  return request


def grpc_client(target: str, image: np.ndarray) -> Call:
  stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
  request = predict_request(image)
  def call() -> object:
    return stub.Predict(request, timeout=30)
  return call


def rest_client(port: int, image: np.ndarray) -> Call:
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  body = json.dumps({'instances': [image.tolist()]}).encode()
  def call() -> object:
    connection.request('POST', '/v1/models/mnist:predict', body=body,
                       headers={'Content-Type': 'application/json'})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
      raise RuntimeError(payload[:300])
    return json.loads(payload)['predictions'][0]['classes']
  return call


def drive(clients: List[Call], seconds: float) -> Dict[str, object]:
  """Every client calls back to back until the time is up; returns count, time, latencies."""
  latencies: List[List[float]] = [[] for _ in clients]
  errors: List[str] = []
  start = time.perf_counter()
  stop_at = start + seconds

  def worker(call: Call, out: List[float]) -> None:
    try:
      while (t0 := time.perf_counter()) < stop_at:
        call()
        out.append(time.perf_counter() - t0)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'{type(e).__name__}: {e}')

  threads = [threading.Thread(target=worker, args=(c, out)) for c, out in zip(clients, latencies)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=seconds + 60)
  if errors:
    raise RuntimeError(f'{len(errors)} clients failed, first: {errors[0]}')
  return {'seconds': time.perf_counter() - start,
          'latencies': [t for out in latencies for t in out]}


def cpu_seconds(pid: int) -> float:
  """User + system CPU time of a process so far (Linux /proc)."""
  fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def server_counters(rest_url: str) -> Dict[str, float]:
  """From the server's Prometheus page: serving_default's model calls and rows, and the
  requests answered OK, CANCELLED (the client went away) and otherwise (TF Serving's
  request_count, every API)."""
  with urllib.request.urlopen(rest_url + '/monitoring/prometheus/metrics', timeout=30) as page:
    text = page.read().decode()
  totals = {'calls': 0.0, 'rows': 0.0, 'OK': 0.0, 'CANCELLED': 0.0, 'failed': 0.0}
  for family in text_string_to_metric_families(text):
    for sample in family.samples:
      if sample.name == REQUEST_COUNT:
        status = sample.labels.get('status')
        totals[status if status in ('OK', 'CANCELLED') else 'failed'] += sample.value
      elif sample.labels.get('signature') != features.SERVING_DEFAULT:
        continue
      elif sample.name == 'serving_model_calls_total':
        totals['calls'] += sample.value
      elif sample.name == 'serving_batch_size_sum':
        totals['rows'] += sample.value
  return totals


Phase = Callable[[float], Dict[str, object]]   # seconds -> seconds, latencies, ...


def python_phase(clients: List[Call]) -> Phase:
  return lambda seconds: drive(clients, seconds)


def check_answered(url: str, result: Dict[str, object], before: Dict[str, float],
                   after: Dict[str, float]) -> None:
  """Every request h2load saw done was answered OK by the server (`server_counters` before
  and after): a failed gRPC call is HTTP 200 with the error in its trailers, which h2load
  does not read. Requests still in flight when time is up are reset: CANCELLED at most."""
  counts = {key: after[key] - before[key] for key in ('OK', 'CANCELLED', 'failed')}
  in_flight = result['started'] - result['done']
  if counts['failed'] or counts['CANCELLED'] > in_flight or counts['OK'] < result['done']:
    raise RuntimeError(f'{url}: h2load finished {result["done"]} requests (and reset '
                       f'{in_flight}), the server answered {counts}')


def h2load_load(url: str, body: bytes, headers: Sequence[str], clients: int,
                http1: bool = False) -> Phase:
  """h2load POSTing `body` to `url`; `measured(check=True)` checks its answers."""
  def phase(seconds: float) -> Dict[str, object]:
    return {'seconds': seconds, 'url': url,
            **h2load.run(url, body, headers, clients, seconds, http1)}
  return phase


def h2load_phase(server: process.ServerProcess, protocol: str, image: np.ndarray,
                 clients: int) -> Phase:
  """One phase's load from h2load: every connection sends `image` (one row)."""
  if protocol == 'gRPC':
    return h2load_load(f'http://{server.grpc_target}{h2load.PREDICT_PATH}',
                       h2load.grpc_body(predict_request(image)), h2load.GRPC_HEADERS, clients)
  return h2load_load(f'{server.rest_url}/v1/models/mnist:predict',
                     json.dumps({'instances': [image.tolist()]}).encode(), h2load.REST_HEADERS,
                     clients, http1=True)


def measured(server: process.ServerProcess, load: Phase, seconds: float, check: bool
             ) -> Tuple[Dict[str, object], Dict[str, float], float]:
  """`load` for `seconds` against `server`: its result, how far the server's counters moved
  and the server's CPU seconds meanwhile. With `check` (h2load's loads), every request the
  load finished must have been answered OK (`check_answered`)."""
  before, cpu_before = server_counters(server.rest_url), cpu_seconds(server.process.pid)
  result = load(seconds)
  after, cpu_after = server_counters(server.rest_url), cpu_seconds(server.process.pid)
  if check:
    check_answered(result['url'], result, before, after)
  return result, {key: after[key] - before[key] for key in after}, cpu_after - cpu_before


def run(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
  work = Path(tempfile.mkdtemp(prefix='batching-bench-'))
  serving_dir = Path(args.model_dir) if args.model_dir else build_model(work)
  params = work / 'batching.config'
  params.write_text(Path(args.parameters).read_text() if args.parameters else DEFAULT_PARAMETERS)
  images = idx.load_source(configs.SHARED_DATA_DIR, 'test', args.clients).images
  servers = {'off': process.start_server(serving_dir, 'mnist'),
             'on': process.start_server(serving_dir, 'mnist', args=[
                 '--enable_batching', '--batching_parameters_file', str(params)])}
  phases = [(client, protocol, mode) for client in args.load for protocol in ('gRPC', 'REST')
            for mode in ('off', 'on')]
  raw: Dict[tuple, Dict[str, list]] = {p: {'seconds': [], 'latencies': []} for p in phases}
  counters: Dict[tuple, Dict[str, float]] = {p: {'calls': 0.0, 'rows': 0.0, 'cpu': 0.0}
                                             for p in phases}
  try:
    loads = {}
    for client, protocol, mode in phases:
      server = servers[mode]
      if client == 'h2load':
        loads[(client, protocol, mode)] = h2load_phase(server, protocol, images[0], args.clients)
      else:
        loads[(client, protocol, mode)] = python_phase([
            grpc_client(server.grpc_target, image) if protocol == 'gRPC'
            else rest_client(server.rest_port, image) for image in images])
      loads[(client, protocol, mode)](args.warmup)
    for _ in range(args.rounds):
      for phase in phases:
        result, moved, cpu = measured(servers[phase[2]], loads[phase],
                                      args.seconds / args.rounds, check=phase[0] == 'h2load')
        counters[phase]['cpu'] += cpu
        raw[phase]['seconds'].append(result['seconds'])
        raw[phase]['latencies'].extend(result['latencies'])
        for key in ('calls', 'rows'):
          counters[phase][key] += moved[key]
  finally:
    for server in servers.values():
      server.stop()
    shutil.rmtree(work, ignore_errors=True)
  results = {}
  for phase, data in raw.items():
    latencies = data['latencies']
    results[' '.join(phase)] = {
        'requests': len(latencies), 'requests_per_s': len(latencies) / sum(data['seconds']),
        'p50_ms': percentile(latencies, 50) * 1e3, 'p99_ms': percentile(latencies, 99) * 1e3,
        'rows_per_call': counters[phase]['rows'] / max(counters[phase]['calls'], 1),
        'server_cpu_us_per_request': counters[phase]['cpu'] / len(latencies) * 1e6}
  return results


def report(results: Dict[str, Dict[str, float]], args: argparse.Namespace) -> str:
  lines = [f'{args.clients} concurrent clients, batch 1, {args.seconds:g} s per phase in '
           f'{args.rounds} interleaved rounds', '',
           '| clients | protocol | batching | requests | requests/s | p50 ms | p99 ms '
           '| rows per model call | server CPU per request |',
           '|---|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    client, protocol, mode = name.split()
    lines.append(f'| {client} | {protocol} | {mode} | {r["requests"]} | '
                 f'{r["requests_per_s"]:.0f} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | '
                 f'{r["rows_per_call"]:.1f} | {r["server_cpu_us_per_request"]:.0f} us |')
  lines.append('')
  for client in args.load:
    for protocol in ('gRPC', 'REST'):
      off, on = results[f'{client} {protocol} off'], results[f'{client} {protocol} on']
      ratio = on['requests_per_s'] / off['requests_per_s']
      met = ratio >= TARGET_THROUGHPUT_RATIO and on['p99_ms'] <= off['p99_ms']
      lines.append(f'- {client} clients, {protocol}: batching throughput x{ratio:.2f}, p99 '
                   f'{on["p99_ms"]:.2f} ms vs {off["p99_ms"]:.2f} ms (target '
                   f'x{TARGET_THROUGHPUT_RATIO} at no worse p99): '
                   f'{"met" if met else "MISSED"}')
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model-dir', help='a serving dir holding mnist/<version>/ '
                      '(default: build a small model first)')
  parser.add_argument('--parameters', help='a BatchingParameters text proto file '
                      '(default: the one printed by --show-parameters)')
  parser.add_argument('--show-parameters', action='store_true')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=30, help='measured time per phase')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--warmup', type=float, default=2, help='seconds per phase, unmeasured')
  parser.add_argument('--load', action='append', choices=('h2load', 'python'),
                      help='which clients drive the servers (repeat for both; default: both '
                      'when h2load is installed, else python)')
  parser.add_argument('--json', action='store_true', help='also print the raw figures as JSON')
  args = parser.parse_args(argv)
  if args.show_parameters:
    print(DEFAULT_PARAMETERS)
    return
  if not args.load:
    args.load = ['h2load', 'python'] if h2load.available() else ['python']
    if not h2load.available():
      print('h2load not found (apt-get install nghttp2-client): Python clients only')
  elif 'h2load' in args.load and not h2load.available():
    parser.error('--load h2load: h2load not found (apt-get install nghttp2-client)')
  results = run(args)
  print(report(results, args))
  if args.json:
    print(json.dumps(results, indent=1))


if __name__ == '__main__':
  main()
