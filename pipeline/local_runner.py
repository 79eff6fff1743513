"""Runs the pipeline with TFX's LocalDagRunner: Beam DirectRunner, SQLite ML Metadata.

Also the `--pipeline_path` for TFX's CLI: `tfx pipeline create --engine local
--pipeline_path pipeline/local_runner.py`, then `tfx run create --engine local
--pipeline_name mnist`. The CLI runs this file as a script, so configuration then comes
from `MNIST_*` environment variables (see pipeline/configs.py).
"""

import os
import shlex
import sys

if __name__ == '__main__':  # run as a file by TFX's CLI: make the project importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from trainer import logs as _logs
  _logs.quiet()  # before TensorFlow is imported below

# pylint: disable=g-import-not-at-top
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline

from pipeline import beam_deps, configs, pipeline, preflight
from trainer import logs
# pylint: enable=g-import-not-at-top


def build(config: configs.LocalConfig) -> Pipeline:
  """The DAG on this machine's folders (resolved by `LocalConfig`), with `--beam-args`
  given to every Beam component: for a runner with workers elsewhere (Dataflow,
  PortableRunner, ...) the project's wheel goes with them (pipeline/beam_deps.py)."""
  config.metadata_path.parent.mkdir(parents=True, exist_ok=True)
  params = config.params()
  return pipeline.create_pipeline(
      params, config.locations(),
      beam_deps.local_beam_args(params, shlex.split(config.beam_args)))


def run(config: configs.LocalConfig) -> None:
  """Callers check inputs, outputs and disk space first (pipeline/preflight.py):
  `python -m pipeline run` does it before TensorFlow is even imported."""
  LocalDagRunner().run(build(config))


def main() -> None:
  logs.show_progress()
  config = configs.parse()
  preflight.prepare(config)
  run(config)


if __name__ == '__main__':
  main()
