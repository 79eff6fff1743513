"""Runs the model manager, the gRPC server and the REST server in one process.

Start-up follows TF Serving: versions already on disk are loaded before the ports open,
so a readiness probe on the status endpoint only passes once the model can answer.
SIGTERM / SIGINT stop the servers gracefully (in-flight requests finish).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Optional

from aiohttp import web

from serving import grpc_service, metrics, rest, ui, warmup
from serving.batching import BatchingParameters, read_parameters
from serving.config import ModelConfigWatcher, ServerConfig
from serving.models import ModelManager
from serving.servable import Servable

log = logging.getLogger(__name__)


def make_manager(config: ServerConfig, batching: Optional[BatchingParameters]) -> ModelManager:
  watcher = ModelConfigWatcher(config.model_config_file, config.model_name)

  def load(name: str, version: int, path: Path) -> Servable:
    """Loaded, then warmed up from its recorded requests (if any) before it serves."""
    servable = Servable.load(name, version, path, config.limits, batching)
    try:
      warmup.replay(servable)
    except Exception:
      servable.close()
      raise
    return servable

  return ModelManager(config.model_name, config.base_path, watcher.current, load)


def request_threads(config: ServerConfig, batching: Optional[BatchingParameters]) -> int:
  """Threads per front end. With batching, enough requests must wait at once to fill a
  batch: TF Serving advises twice max_batch_size client threads."""
  threads = max(2 * config.inference_threads, 4)
  return max(threads, min(2 * batching.max_batch_size, 64)) if batching else threads


def _bind(host: str, port: int) -> socket.socket:
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  sock.listen(512)
  sock.setblocking(False)
  return sock


def _write_ready_file(path: Optional[Path], rest_port: int, grpc_port: int) -> None:
  if not path:
    return
  tmp = Path(f'{path}.tmp')
  tmp.write_text(json.dumps({'rest_port': rest_port, 'grpc_port': grpc_port,
                             'pid': os.getpid()}))
  tmp.replace(path)  # atomic: readers never see half a file


async def serve(config: ServerConfig) -> None:
  batching = (read_parameters(config.batching_parameters_file)
              if config.enable_batching else None)
  if batching:
    log.info('Batching on: %s', batching)
  manager = make_manager(config, batching)
  log.info('Model %s: base path %s', config.model_name, config.base_path)
  await asyncio.get_running_loop().run_in_executor(None, lambda: manager.poll_once(startup=True))
  if not manager.snapshot.servables:
    log.warning('No loadable version of %s under %s yet; waiting for one', config.model_name,
                config.base_path)
  threads = request_threads(config, batching)
  grpc_server = grpc_service.GrpcServer(manager, config.host, config.grpc_port,
                                        config.max_body_bytes, threads,
                                        batching=batching is not None)
  grpc_port = grpc_server.port
  api = rest.RestApi(manager, config.max_body_bytes,
                     threads if batching else config.inference_threads, inline=not batching)
  page = ui.Page(config.model_name, config.data_dir,
                 on_correction=lambda label: metrics.count_correction(config.model_name))
  runner = web.AppRunner(api.app(page.routes()), access_log=None, handle_signals=False)
  await runner.setup()
  sock = _bind(config.host, config.rest_port)
  await web.SockSite(runner, sock).start()
  rest_port = sock.getsockname()[1]
  manager.start_polling(config.poll_seconds)
  log.info('Serving %s: REST on http://%s:%d, gRPC on %s:%d', config.model_name, config.host,
           rest_port, config.host, grpc_port)
  _write_ready_file(config.ready_file, rest_port, grpc_port)

  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(sig, stop.set)
  await stop.wait()
  log.info('Shutting down')
  manager.stop()
  grpc_done = loop.run_in_executor(None, grpc_server.stop, 5)
  await runner.cleanup()
  await grpc_done
