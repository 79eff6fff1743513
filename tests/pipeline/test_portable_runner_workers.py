"""The project's code reaches Beam workers that run elsewhere only when it is shipped.

The ExampleGen and Transform executors run through Beam's portable job server (the
PortableRunner's in-process job service, `--job_endpoint=embed`) with EXTERNAL SDK workers:
a worker pool (Beam's worker_pool_main) started in a Python environment that has the
test's dependencies (a path entry to the venv's site-packages, whose .pth files, among
them the project's editable finder, are then not run) but not the project, in a scratch
working directory. The pool starts each worker through beam_boot.py, an emulation of the
SDK container's boot, which installs the job's staged extra packages and nothing else.
The flags are the local runner's (`pipeline.beam_deps.local_beam_args`): for a remote
runner they add the project's wheel, so only that shipped wheel can make the run pass.
Without it the ExampleGen's workers fail to import the project.

What the workers need: the ExampleGen's Beam transforms are functions of
components.mnist_example_gen.executor; Transform loads trainer.preprocessing by name, and
its Beam pipeline (with the statistics the component computes by default) holds DoFns
that name it: without the wheel its workers fail with "No module named 'trainer'"
(checked by hand; the negative here is the ExampleGen's, the cheaper of the two).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Tuple

import apache_beam as beam
import pytest
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.proto import example_gen_pb2, transform_pb2
from tfx.types import standard_artifacts, standard_component_specs as specs
from tfx.utils import proto_utils

from components.mnist_example_gen import component, executor as example_gen_executor
from pipeline import beam_deps, configs, pipeline as dag
from trainer import features

BOOT = Path(__file__).with_name('beam_boot.py')
SITE_PACKAGES = sysconfig.get_paths()['purelib']  # this venv's: Beam, TFX, TensorFlow
POOL_START_TIMEOUT = 60


class Workers(NamedTuple):
  address: str   # the worker pool's endpoint: --environment_config
  log: Path      # the pool's and its workers' output


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _worker_environment(root: Path) -> Tuple[Path, Dict[str, str]]:
  """A venv without the project: its site-packages holds a plain path line to this
  venv's, which Python adds to sys.path without running that folder's .pth files."""
  venv = root / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  (site,) = (venv / 'lib').glob('python3*/site-packages')
  (site / 'test_dependencies.pth').write_text(SITE_PACKAGES + '\n')
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME', 'PYTHONSTARTUP')}
  env.update(TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  return venv / 'bin' / 'python', env


@pytest.fixture(scope='module')
def workers(tmp_path_factory) -> Iterator[Workers]:
  root = tmp_path_factory.mktemp('beam-workers')
  scratch = root / 'cwd'
  scratch.mkdir()
  python, env = _worker_environment(root)
  probe = subprocess.run([str(python), '-c', 'import components'],
                         cwd=scratch, env=env, capture_output=True, text=True, check=False)
  assert "No module named 'components'" in probe.stderr, (
      'the workers\' environment imports the project without any wheel (is the project '
      f'installed into {SITE_PACKAGES} other than editable?) {probe.stderr[-2000:]}')

  shutil.copy(BOOT, scratch / 'boot.py')
  boot = scratch / 'boot.sh'
  boot.write_text(f'#!/bin/sh\nexec "{python}" "{scratch / "boot.py"}" "$@"\n')
  boot.chmod(0o755)
  env['BEAM_BOOT_SCRATCH'] = str(root)
  port = _free_port()
  log = root / 'workers.log'
  with open(log, 'wb') as out:
    pool = subprocess.Popen(
        [str(python), '-m', 'apache_beam.runners.worker.worker_pool_main',
         f'--service_port={port}', f'--container_executable={boot}'],
        cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + POOL_START_TIMEOUT
    while True:
      assert pool.poll() is None, log.read_text()[-2000:]
      try:
        socket.create_connection(('localhost', port), timeout=1).close()
        break
      except OSError:
        assert time.monotonic() < deadline, 'the worker pool did not start'
        time.sleep(0.5)
    yield Workers(f'localhost:{port}', log)
  finally:
    _kill_group(pool.pid, signal.SIGTERM)  # the pool and the workers it started
    try:
      pool.wait(timeout=20)
    except subprocess.TimeoutExpired:
      _kill_group(pool.pid, signal.SIGKILL)
      pool.wait()


def _kill_group(pid: int, sig: int) -> None:
  try:
    os.killpg(pid, sig)
  except ProcessLookupError:  # every process of the group has exited
    pass


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
  return beam_deps.project_wheel(cache_dir=tmp_path_factory.mktemp('wheels'))


def portable_flags(workers: Workers) -> List[str]:
  return ['--runner=PortableRunner', '--job_endpoint=embed',
          '--environment_type=EXTERNAL', f'--environment_config={workers.address}']


def example_gen_properties(data_dir: Path) -> dict:
  """The component's properties on a slice: 60 train, 20 eval, 20 test examples."""
  return {
      'input_base': str(data_dir),
      'input_config': proto_utils.proto_to_json(component.input_config()),
      'output_config': proto_utils.proto_to_json(example_gen_pb2.Output()),
      'output_data_format': example_gen_pb2.FORMAT_TF_EXAMPLE,
      'output_file_format': example_gen_pb2.FORMAT_TFRECORDS_GZIP,
      example_gen_executor.EVAL_SIZE_KEY: 20, example_gen_executor.LIMIT_TRAIN_KEY: 80,
      example_gen_executor.LIMIT_TEST_KEY: 20, example_gen_executor.SPLIT_SEED_KEY: 0,
      example_gen_executor.SPAN_WINDOW_KEY: 0, example_gen_executor.HOLDOUT_FRACTION_KEY: 0.1,
  }


def run_example_gen(data_dir: Path, out: Path, beam_args: List[str]):
  examples = standard_artifacts.Examples()
  examples.uri = str(out)
  context = BaseBeamExecutor.Context(beam_pipeline_args=beam_args)
  example_gen_executor.Executor(context).Do({}, {'examples': [examples]},
                                            example_gen_properties(data_dir))
  return examples


STATISTICS_OUTPUTS = (
    (specs.PRE_TRANSFORM_SCHEMA_KEY, standard_artifacts.Schema),
    (specs.PRE_TRANSFORM_STATS_KEY, standard_artifacts.ExampleStatistics),
    (specs.POST_TRANSFORM_SCHEMA_KEY, standard_artifacts.Schema),
    (specs.POST_TRANSFORM_STATS_KEY, standard_artifacts.ExampleStatistics),
    (specs.POST_TRANSFORM_ANOMALIES_KEY, standard_artifacts.ExampleAnomalies))


def run_transform(examples, out: Path, beam_args: List[str]) -> Path:
  """The pipeline's Transform: its preprocessing_fn by name, analyzing train, with the
  pre- and post-transform statistics the component computes by default. (Without
  statistics TFX runs this analyzer-free preprocessing_fn in place, without Beam.)"""
  schema = standard_artifacts.Schema()
  schema.uri = str(out / 'schema')
  Path(schema.uri).mkdir(parents=True)
  shutil.copy(configs.CURATED_SCHEMA, Path(schema.uri) / 'schema.pbtxt')
  outputs = {}
  for key, kind in ((specs.TRANSFORM_GRAPH_KEY, standard_artifacts.TransformGraph),
                    *STATISTICS_OUTPUTS):
    artifact = kind()
    artifact.uri = str(out / key)
    outputs[key] = [artifact]
  exec_properties = {
      specs.PREPROCESSING_FN_KEY: dag.PREPROCESSING_FN,
      specs.SPLITS_CONFIG_KEY: proto_utils.proto_to_json(
          transform_pb2.SplitsConfig(analyze=[features.TRAIN_SPLIT])),
      specs.FORCE_TF_COMPAT_V1_KEY: 0,
  }
  context = BaseBeamExecutor.Context(beam_pipeline_args=beam_args,
                                     tmp_dir=str(out / 'tmp'))
  transform_executor.Executor(context).Do(
      {specs.EXAMPLES_KEY: [examples], specs.SCHEMA_KEY: [schema]}, outputs,
      exec_properties)
  return out


def test_local_runner_flags_for_a_portable_runner_ship_the_wheel(workers, wheel):
  args = beam_deps.local_beam_args(configs.PipelineParams(), portable_flags(workers),
                                   wheel=lambda: wheel)
  assert args == [*portable_flags(workers), f'--extra_packages={wheel}']


def test_example_gen_and_transform_run_on_workers_with_the_shipped_wheel(
    workers, wheel, mnist_dir, tmp_path):
  args = beam_deps.local_beam_args(configs.PipelineParams(), portable_flags(workers),
                                   wheel=lambda: wheel)
  examples = run_example_gen(mnist_dir, tmp_path / 'examples', args)
  counts = json.loads(examples.get_string_custom_property(
      example_gen_executor.SPLIT_COUNTS_PROPERTY))
  assert counts == {'train': 60, 'eval': 20, 'test': 20, 'holdout': 0}
  assert list((tmp_path / 'examples' / 'Split-train').glob('*.gz'))
  log = workers.log.read_text()
  assert f'installing extra package {wheel.name}' in log  # through the boot, no other way

  before = log.count('installing extra package')
  transform = run_transform(examples, tmp_path / 'transform', args)
  assert (transform / specs.TRANSFORM_GRAPH_KEY / 'transform_fn' / 'saved_model.pb').is_file()
  assert list((transform / specs.POST_TRANSFORM_STATS_KEY).rglob('*FeatureStats*'))
  assert workers.log.read_text().count('installing extra package') > before  # a new worker


# The job service's thread raises the pipeline's failure again after reporting it.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_without_the_wheel_the_workers_cannot_import_the_project(workers, mnist_dir):
  # The ExampleGen's own Beam transforms (its executor's GenerateExamplesByBeam, without
  # TFX's writing and its imports) with the same flags less the wheel. TFX's packaging
  # is not involved: it would ship TFX alone, no project.
  properties = example_gen_properties(mnist_dir)
  with pytest.raises(Exception, match="No module named 'components'"):
    with beam.Pipeline(argv=portable_flags(workers)) as pipeline:
      example_gen_executor.Executor().GenerateExamplesByBeam(pipeline, properties)
