"""Two checkouts of the server side by side: gRPC, 16 batch-1 clients, batching off and on.

For a change to the server itself: the same clients, model and batching file drive the
servers of both checkouts (e.g. a `git worktree` of the commit before the change and this
one), phases interleaved in rounds so that background load hits them alike. Prints
throughput, p50/p99 and server CPU per request for each checkout and mode. The clients are
h2load's when it is installed (every answer checked against the server's counters, as in
batching_bench.py), else the Python ones; `--load` picks.

  git worktree add /tmp/before HEAD~1
  .venv/bin/python benchmarks/server_ab.py --before /tmp/before --seconds 36 --rounds 6
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import logs  # pylint: disable=wrong-import-position

logs.quiet()

# pylint: disable=wrong-import-position
import argparse
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

from benchmarks import h2load
from benchmarks.batching_bench import (DEFAULT_PARAMETERS, grpc_client, h2load_phase, measured,
                                       python_phase)
from benchmarks.serving_bench import build_model, percentile
from pipeline import configs
from serving import process
from trainer import idx

PROJECT = Path(__file__).resolve().parent.parent


def run(args: argparse.Namespace) -> Dict[Tuple[str, str], Dict[str, float]]:
  work = Path(tempfile.mkdtemp(prefix='server-ab-'))
  serving_dir = Path(args.model_dir) if args.model_dir else build_model(work)
  params = work / 'batching.config'
  params.write_text(Path(args.parameters).read_text() if args.parameters else DEFAULT_PARAMETERS)
  images = idx.load_source(configs.SHARED_DATA_DIR, 'test', args.clients).images
  roots = {'before': Path(args.before).resolve(), 'after': Path(args.after).resolve()}
  servers = {}
  try:
    for code, root in roots.items():
      for mode in ('off', 'on'):
        extra = ['--enable_batching', '--batching_parameters_file', str(params)]
        servers[(code, mode)] = process.start_server(
            serving_dir, 'mnist', args=extra if mode == 'on' else [], project_root=root)
    if args.load == 'h2load':
      loads = {key: h2load_phase(server, 'gRPC', images[0], args.clients)
               for key, server in servers.items()}
    else:
      loads = {key: python_phase([grpc_client(server.grpc_target, image) for image in images])
               for key, server in servers.items()}
    for load in loads.values():
      load(args.warmup)
    raw = {key: {'seconds': 0.0, 'latencies': [], 'cpu': 0.0} for key in servers}
    for _ in range(args.rounds):
      for key, server in servers.items():
        result, _, cpu = measured(server, loads[key], args.seconds / args.rounds,
                                  check=args.load == 'h2load')
        raw[key]['cpu'] += cpu
        raw[key]['seconds'] += result['seconds']
        raw[key]['latencies'].extend(result['latencies'])
  finally:
    for server in servers.values():
      server.stop()
    shutil.rmtree(work, ignore_errors=True)
  return {key: {'requests_per_s': len(r['latencies']) / r['seconds'],
                'p50_ms': percentile(r['latencies'], 50) * 1e3,
                'p99_ms': percentile(r['latencies'], 99) * 1e3,
                'server_cpu_us_per_request': r['cpu'] / len(r['latencies']) * 1e6}
          for key, r in raw.items()}


def report(results: Dict[Tuple[str, str], Dict[str, float]], args: argparse.Namespace) -> str:
  lines = [f'gRPC, {args.clients} {args.load} clients, batch 1, {args.seconds:g} s per phase '
           f'in {args.rounds} rounds; before = {args.before}, after = {args.after}', '',
           '| code | batching | requests/s | p50 ms | p99 ms | server CPU per request |',
           '|---|---|---|---|---|---|']
  for (code, mode), r in results.items():
    lines.append(f'| {code} | {mode} | {r["requests_per_s"]:.0f} | {r["p50_ms"]:.2f} | '
                 f'{r["p99_ms"]:.2f} | {r["server_cpu_us_per_request"]:.0f} us |')
  lines.append('')
  for mode in ('off', 'on'):
    before, after = results[('before', mode)], results[('after', mode)]
    throughput = after['requests_per_s'] / before['requests_per_s']
    cpu = after['server_cpu_us_per_request'] / before['server_cpu_us_per_request']
    lines.append(f'- batching {mode}: after/before throughput x{throughput:.2f}, server CPU '
                 f'per request x{cpu:.2f}')
  for code in ('before', 'after'):
    ratio = results[(code, 'on')]['requests_per_s'] / results[(code, 'off')]['requests_per_s']
    lines.append(f'- {code}: batching on/off throughput x{ratio:.2f}')
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--before', required=True, help='the other checkout (its serving/ runs)')
  parser.add_argument('--after', default=str(PROJECT), help='default: this checkout')
  parser.add_argument('--model-dir', help='a serving dir holding mnist/<version>/ '
                      '(default: build a small model first)')
  parser.add_argument('--parameters', help='a BatchingParameters file (default: '
                      'batching_bench.py --show-parameters)')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=24, help='measured time per phase')
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--warmup', type=float, default=2, help='seconds per phase, unmeasured')
  parser.add_argument('--load', choices=('h2load', 'python'),
                      help='which clients (default: h2load when installed, else python)')
  args = parser.parse_args(argv)
  if args.load is None:
    args.load = 'h2load' if h2load.available() else 'python'
  elif args.load == 'h2load' and not h2load.available():
    parser.error('--load h2load: h2load not found (apt-get install nghttp2-client)')
  print(report(run(args), args))


if __name__ == '__main__':
  main()
