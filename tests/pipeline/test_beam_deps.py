"""Beam flags of the local runner, and the project's wheel for workers elsewhere (the
workers themselves: test_portable_runner_workers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tfx.dsl.components.base import executor_spec

from pipeline import beam_deps, component_ids as ids, configs

WHEEL = Path('/wheels/mnist_tfx-0.1.0-py3-none-any.whl')


def fixed_wheel() -> Path:
  return WHEEL


def no_wheel() -> Path:
  raise AssertionError('the wheel must not be built here')


def test_without_beam_args_the_local_runner_keeps_its_direct_runner_flags():
  params = configs.PipelineParams()
  assert beam_deps.local_beam_args(params, [], no_wheel) == params.beam_pipeline_args()


def test_direct_runner_flags_given_win_over_the_defaults():
  args = beam_deps.local_beam_args(configs.PipelineParams(),
                                   ['--direct_num_workers=2',
                                    '--direct_running_mode=multi_processing'], no_wheel)
  assert args == ['--direct_num_workers=2', '--direct_running_mode=multi_processing',
                  configs.NO_EXTRA_PACKAGES]
  # A dependency flag of the user's own: TFX and Beam get it alone.
  args = beam_deps.local_beam_args(configs.PipelineParams(), ['--setup_file=/s/setup.py'],
                                   no_wheel)
  assert configs.NO_EXTRA_PACKAGES not in args and '--setup_file=/s/setup.py' in args


@pytest.mark.parametrize('runner', [
    'DataflowRunner', 'PortableRunner', 'FlinkRunner', 'SparkRunner',
    'apache_beam.runners.portability.portable_runner.PortableRunner'])
def test_runners_with_workers_elsewhere_get_the_project_wheel(runner):
  flags = [f'--runner={runner}', '--job_endpoint=localhost:8099']
  args = beam_deps.local_beam_args(configs.PipelineParams(), flags, fixed_wheel)
  assert args == [*flags, f'--extra_packages={WHEEL}']  # no DirectRunner flags, no empty
  assert beam_deps.is_remote(flags) and beam_deps.ships_dependencies(args)


@pytest.mark.parametrize('dependency', [
    '--sdk_container_image=registry/mnist-tfx:1', '--extra_packages=/mine.whl',
    '--requirements_file=requirements.txt', '--setup_file=./setup.py'])
def test_a_dependency_flag_of_the_users_own_wins(dependency):
  flags = ['--runner=DataflowRunner', '--project=p', dependency]
  assert beam_deps.local_beam_args(configs.PipelineParams(), flags, no_wheel) == flags


def test_beam_args_flag_reaches_the_pipeline_of_the_local_runner(tmp_path, monkeypatch):
  from pipeline import local_runner  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(beam_deps, 'project_wheel', fixed_wheel)
  flags = '--runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK'
  config = configs.parse(['--beam-args', flags, '--output-dir', str(tmp_path)])
  assert config.beam_args == flags
  dag = local_runner.build(config)
  expected = [*flags.split(), f'--extra_packages={WHEEL}']
  assert dag.beam_pipeline_args == expected
  beam_components = [c for c in dag.components
                     if isinstance(c.executor_spec, executor_spec.BeamExecutorSpec)]
  assert {c.id for c in beam_components} >= {ids.EXAMPLE_GEN, ids.TRANSFORM,
                                               ids.STATISTICS_GEN, ids.EVALUATOR}
  for component in beam_components:  # TFX puts the pipeline's flags first
    assert component.executor_spec.beam_pipeline_args[:len(expected)] == expected


def test_wheel_is_built_once_per_code_key_and_rebuilt_after_an_edit(tmp_path, monkeypatch):
  root = tmp_path / 'repo'
  for name in beam_deps.WHEEL_SOURCES:
    source = configs.REPO_ROOT / name
    if source.is_dir():
      shutil.copytree(source, root / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      root.mkdir(exist_ok=True)
      shutil.copy(source, root / name)
  cache = tmp_path / 'cache'
  wheel = beam_deps.project_wheel(cache, root)
  assert wheel.name == 'mnist_tfx-0.1.0-py3-none-any.whl' and wheel.parent.parent == cache
  import zipfile  # pylint: disable=import-outside-toplevel
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {'components/mnist_example_gen/executor.py', 'trainer/preprocessing.py',
          'pipeline/schema/schema.pbtxt'} <= names
  assert not list(root.rglob('*.egg-info')) and not (root / 'build').exists()

  monkeypatch.setattr(beam_deps, 'build_wheel', lambda *a: no_wheel())
  assert beam_deps.project_wheel(cache, root) == wheel  # cached
  (root / 'trainer' / 'preprocessing.py').write_text('# edited\n', encoding='utf-8')
  with pytest.raises(AssertionError, match='must not be built'):
    beam_deps.project_wheel(cache, root)  # a new key: built again
