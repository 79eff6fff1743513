"""nghttp2's `h2load` as the benchmarks' load generator: C clients that leave the machine's
CPU to the servers being measured.

A Python client (the official gRPC stub, or http.client) spends ~250-330 us of CPU per
request under its own GIL, and 16 of them in one process answer a wave of replies one after
another; h2load spends ~50 us per request (gRPC, 16 connections). It sends the
same bytes, over HTTP/2 (gRPC: a length-prefixed message, `content-type: application/grpc`)
or HTTP/1.1 keep-alive (REST), with one request in flight per connection: `clients`
connections are `clients` concurrent clients. HTTP/2 answers a failed gRPC call with status
200 and the error in its trailers, which h2load does not read, so callers check the
server's own request counters as well (batching_bench does).

Debian/Ubuntu: `apt-get install nghttp2-client`.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

from google.protobuf.message import Message

PREDICT_PATH = '/tensorflow.serving.PredictionService/Predict'
GRPC_HEADERS = ('content-type: application/grpc', 'te: trailers')
REST_HEADERS = ('content-type: application/json',)
_SUMMARY = re.compile(r'requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, '
                      r'(\d+) failed, (\d+) errored, (\d+) timeout')
_STATUS_CODES = re.compile(r'status codes: ([^\n]*)')


def available() -> bool:
  return shutil.which('h2load') is not None


def grpc_body(request: Message) -> bytes:
  """A unary gRPC request as it travels in the HTTP/2 DATA frames: uncompressed flag,
  big-endian length, the serialized message."""
  payload = request.SerializeToString()
  return b'\0' + struct.pack('>I', len(payload)) + payload


def run(url: str, body: bytes, headers: Sequence[str], clients: int, seconds: float,
        http1: bool = False) -> Dict[str, object]:
  """`clients` connections POST `body` back to back for `seconds`; returns the number of
  requests started and done, and the latency of each one done (seconds)."""
  with tempfile.TemporaryDirectory(prefix='h2load-') as work:
    data, log = Path(work) / 'body', Path(work) / 'requests.tsv'
    data.write_bytes(body)
    command = ['h2load', '--clients', str(clients), '--max-concurrent-streams', '1',
               '--threads', '1', '--duration', f'{max(int(seconds * 1000), 1)}ms',
               '--data', str(data), '--log-file', str(log), *(['--h1'] if http1 else [])]
    for header in headers:
      command += ['--header', header]
    result = subprocess.run(command + [url], capture_output=True, text=True, check=False)
    summary = _SUMMARY.search(result.stdout)
    if result.returncode != 0 or summary is None:
      raise RuntimeError(f'h2load failed (exit {result.returncode}): '
                         f'{(result.stderr or result.stdout)[-1500:]}')
    _, started, done, succeeded, failed, errored, timeout = map(int, summary.groups())
    if failed or errored or timeout or succeeded != done:
      codes = _STATUS_CODES.search(result.stdout)
      raise RuntimeError(f'h2load against {url}: {done} done, {succeeded} succeeded, {failed} '
                         f'failed, {errored} errored, {timeout} timed out (HTTP status codes: '
                         f'{codes.group(1) if codes else "?"})')
    latencies: List[float] = []
    for line in log.read_text().splitlines():
      _, status, micros = line.split('\t')[:3]
      if status != '200':
        raise RuntimeError(f'h2load: HTTP status {status} from {url}')
      latencies.append(int(micros) / 1e6)
  return {'started': started, 'done': done, 'latencies': latencies}
