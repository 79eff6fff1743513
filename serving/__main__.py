"""`python -m serving`: serve a pushed model directory over REST and gRPC."""

import argparse
import asyncio
import logging
from pathlib import Path
from typing import List, Optional

from serving.config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BODY_BYTES, ServerConfig
from serving.limits import DEFAULT_MAX_INPUT_BYTES
from trainer import logs


def parse_args(argv: Optional[List[str]] = None) -> ServerConfig:
  parser = argparse.ArgumentParser(
      prog='python -m serving',
      description='TF Serving-compatible REST + gRPC server for <model-dir>/<model-name>/<version>/.')
  parser.add_argument('--model-dir', required=True, type=Path,
                      help='the serving directory the Pusher writes to')
  parser.add_argument('--model-name', default='mnist')
  parser.add_argument('--host', default='127.0.0.1',
                      help='address to bind (default loopback; 0.0.0.0 to expose)')
  parser.add_argument('--rest-port', type=int, default=8501, help='0 picks a free port')
  parser.add_argument('--grpc-port', type=int, default=8500, help='0 picks a free port')
  parser.add_argument('--model-config-file', type=Path,
                      help='TF Serving ModelServerConfig text proto: version policy and labels')
  parser.add_argument('--poll-seconds', type=float, default=1.0,
                      help='how often to look for new versions and config changes')
  parser.add_argument('--max-body-bytes', type=int, default=DEFAULT_MAX_BODY_BYTES)
  parser.add_argument('--max-batch-size', type=int, default=DEFAULT_MAX_BATCH_SIZE,
                      help='largest batch one request may send (default 0: no cap)')
  parser.add_argument('--max-input-bytes', type=int, default=DEFAULT_MAX_INPUT_BYTES,
                      help='largest decoded size of one request\'s input tensors')
  parser.add_argument('--inference-threads', type=int, default=4)
  parser.add_argument('--enable-batching', '--enable_batching', action='store_true',
                      help='merge concurrent requests into one model call (TF Serving\'s flag)')
  parser.add_argument('--batching-parameters-file', '--batching_parameters_file', type=Path,
                      help='TF Serving BatchingParameters text proto (needs --enable-batching)')
  parser.add_argument('--ready-file', type=Path,
                      help='write {"rest_port", "grpc_port", "pid"} here once serving')
  parser.add_argument('--data-dir', type=Path,
                      help="the page's corrections go to <data-dir>/incoming/<label>/ "
                           '(none: corrections off)')
  parser.add_argument('--log-level', default='INFO')
  args = parser.parse_args(argv)
  if args.batching_parameters_file and not args.enable_batching:
    parser.error('--batching-parameters-file is set without --enable-batching')  # as TF Serving
  logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(message)s',
                      datefmt='%H:%M:%S', force=True)
  return ServerConfig(
      model_dir=args.model_dir.expanduser().absolute(), model_name=args.model_name,
      host=args.host, rest_port=args.rest_port, grpc_port=args.grpc_port,
      model_config_file=args.model_config_file, poll_seconds=args.poll_seconds,
      max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
      max_input_bytes=args.max_input_bytes,
      inference_threads=args.inference_threads, ready_file=args.ready_file,
      enable_batching=args.enable_batching,
      batching_parameters_file=args.batching_parameters_file,
      data_dir=args.data_dir.expanduser().absolute() if args.data_dir else None)


def main(argv: Optional[List[str]] = None) -> None:
  logs.quiet()  # before the server imports TensorFlow
  config = parse_args(argv)
  from serving import server  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
  for name in ('tensorflow', 'absl'):
    logging.getLogger(name).setLevel(logging.ERROR)
  asyncio.run(server.serve(config))


if __name__ == '__main__':
  main()
