"""Event-loop CPU per batched gRPC Predict spent in this server's own handler, no gRPC.

With batching, every small Predict passes through the asyncio front end's handler on one
event loop, one request after another, while the model waits for the batch to fill: that
loop time is on the serial path of every batch. This runs the handler in-process (its
`BatchingPredictionService.Predict`: resolve, checks, decode, queue, metrics, response),
16 requests at a time as the benchmark's 16 clients send them, and reports the loop
thread's CPU (`time.thread_time`) per request. The batch thread's model is replaced by
outputs computed once, so only the front end is measured (`--model real` keeps it; its
threads then share the cores and the figure swings more). With `--before`, another
checkout is measured the same way, alternating runs in separate processes.

  git worktree add /tmp/before HEAD~1
  .venv/bin/python benchmarks/handler_bench.py --model-dir DIR --before /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

PROJECT = Path(__file__).resolve().parent.parent
PARAMETERS = '''max_batch_size { value: 16 }
batch_timeout_micros { value: 10000 }
num_batch_threads { value: 2 }
'''


def measure(model_dir: Path, model: str, requests: int, clients: int) -> float:
  """Loop CPU per request (us) of this process's checkout, median of 5 runs."""
  from trainer import logs  # pylint: disable=import-outside-toplevel
  logs.quiet()
  # pylint: disable=import-outside-toplevel
  from concurrent import futures
  import numpy as np
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2
  from pipeline import configs
  from serving import grpc_service
  from serving.batching import parse_parameters
  from serving.limits import Limits
  from serving.servable import Servable
  from trainer import features, idx

  version = max((p for p in (model_dir / 'mnist').iterdir() if p.name.isdigit()),
                key=lambda p: int(p.name))
  servable = Servable.load('mnist', int(version.name), version, Limits(),
                           parse_parameters(PARAMETERS))
  if model == 'fake':
    outputs = servable._call(servable.signature(''), {   # pylint: disable=protected-access
        features.PIXELS_INPUT: np.zeros((clients, 28, 28), np.float32)})
    for batcher in servable._batchers.values():          # pylint: disable=protected-access
      batcher._run = lambda merged: {                    # pylint: disable=protected-access
          k: v[:len(next(iter(merged.values())))] for k, v in outputs.items()}

  class Manager:
    def resolve(self, *_: object) -> Servable:
      return servable

  class Context:
    async def abort(self, code: object, message: str) -> None:
      raise RuntimeError(f'{code}: {message}')

  service = grpc_service.BatchingPredictionService(Manager(), futures.ThreadPoolExecutor(4))
  batch = []   # built here, not by batching_bench: `root` may be a checkout without it
  for image in idx.load_source(configs.SHARED_DATA_DIR, 'test', clients).images:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = 'mnist'
    request.inputs[features.PIXELS_INPUT].CopyFrom(
        tf.make_tensor_proto(image[np.newaxis].astype(np.float32)))
    batch.append(request)

  async def rounds(count: int) -> float:
    context = Context()
    start = time.thread_time()
    for _ in range(count):
      await asyncio.gather(*(service.Predict(request, context) for request in batch))
    return (time.thread_time() - start) / (count * clients) * 1e6

  async def main() -> float:
    await rounds(50)
    return statistics.median([await rounds(requests // clients) for _ in range(5)])
  try:
    return asyncio.run(main())
  finally:
    servable.close()


def in_subprocess(root: Path, args: argparse.Namespace) -> float:
  """This script, importing the server code of `root`."""
  command = [sys.executable, __file__, '--one', '--model-dir', str(args.model_dir),
             '--model', args.model, '--requests', str(args.requests),
             '--clients', str(args.clients)]
  done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False,
                        env=dict(os.environ, PYTHONPATH=str(root)))
  if done.returncode:
    raise SystemExit(f'{root}: handler_bench failed:\n{done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model-dir', help='a serving dir holding mnist/<version>/ '
                      '(default: build a small model first)')
  parser.add_argument('--model', choices=('fake', 'real'), default='fake')
  parser.add_argument('--before', help='another checkout, measured alternately')
  parser.add_argument('--rounds', type=int, default=3, help='alternations with --before')
  parser.add_argument('--requests', type=int, default=3200, help='per measured run')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    print(json.dumps(measure(Path(args.model_dir), args.model, args.requests, args.clients)))
    return
  if not args.model_dir:
    sys.path.insert(0, str(PROJECT))
    from benchmarks.serving_bench import build_model  # pylint: disable=import-outside-toplevel
    args.model_dir = str(build_model(Path(tempfile.mkdtemp(prefix='handler-bench-'))))
  roots: Dict[str, Path] = {'this': PROJECT}
  if args.before:
    roots = {'before': Path(args.before).resolve(), 'after': PROJECT}
  figures: Dict[str, List[float]] = {name: [] for name in roots}
  for _ in range(args.rounds if args.before else 1):
    for name, root in roots.items():
      figures[name].append(in_subprocess(root, args))
  print(f'Event-loop CPU per batched gRPC Predict in the handler ({args.clients} at a time, '
        f'{args.model} model), us per request:')
  for name, values in figures.items():
    print(f'- {name} ({roots[name]}): median {statistics.median(values):.1f} '
          f'(runs: {", ".join(f"{v:.1f}" for v in values)})')


if __name__ == '__main__':
  main()
