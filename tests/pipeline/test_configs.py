"""The one config: defaults < MNIST_* environment < command-line flags; parameters apart
from locations."""

import argparse
import dataclasses
from pathlib import Path

import pytest

from pipeline import configs


def _parse(argv, environ):
  parser = argparse.ArgumentParser()
  configs.add_arguments(parser)
  return configs.load(parser.parse_args(argv), environ=environ)


def test_defaults():
  config = configs.load(environ={})
  assert config.eval_size == 5000 and config.limit_train == 0
  assert config.accuracy_threshold == 0.99
  assert config.training.architecture == 'cnn' and config.training.optimizer == 'adam'
  assert config.serving_dir == str(Path(config.output_dir) / 'serving')
  assert config.locations().serving == str(Path(config.serving_dir) / 'mnist')
  assert config.metadata_path.name == 'metadata.db'
  assert config.data_dir == str(configs.default_data_dir())


def test_environment_then_flags_override(tmp_path):
  environ = {'MNIST_EPOCHS': '7', 'MNIST_DATA_DIR': str(tmp_path), 'MNIST_AUGMENT': 'true',
             'MNIST_LEARNING_RATE': '0.5', 'MNIST_SERVING_DIR': str(tmp_path / 's')}
  config = _parse([], environ)
  assert config.training.epochs == 7 and config.training.augment is True
  assert config.training.learning_rate == 0.5 and config.data_dir == str(tmp_path)
  assert config.serving_dir == str(tmp_path / 's')
  config = _parse(['--epochs', '2', '--limit-train', '900', '--eval-size', '100',
                   '--augment', 'no'], environ)
  assert config.training.epochs == 2 and config.limit_train == 900
  assert config.training.augment is False and config.eval_size == 100


def test_bad_values_name_the_field():
  with pytest.raises(ValueError, match='invalid value for epochs'):
    configs.load(environ={'MNIST_EPOCHS': 'many'})
  with pytest.raises(ValueError, match="augment: expected a boolean, found 'maybe'"):
    configs.load(environ={'MNIST_AUGMENT': 'maybe'})
  with pytest.raises(ValueError, match="lr_schedule: expected one of"):
    configs.load(environ={'MNIST_LR_SCHEDULE': 'linear'})
  with pytest.raises(ValueError, match=r'limit_train \(100\) must exceed eval_size \(5000\)'):
    configs.load(environ={'MNIST_LIMIT_TRAIN': '100'})


def test_beam_args_in_process_by_default_or_one_worker_per_core(monkeypatch):
  monkeypatch.setattr(configs.os, 'cpu_count', lambda: 6)
  assert configs.load(environ={}).beam_pipeline_args() == [
      '--direct_running_mode=in_memory', '--direct_num_workers=1', '--extra_packages=']
  assert configs.load(environ={'MNIST_BEAM_WORKERS': '0'}).beam_pipeline_args() == [
      '--direct_running_mode=multi_processing', '--direct_num_workers=6', '--extra_packages=']


def test_relative_local_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = configs.load(environ={'MNIST_OUTPUT_DIR': 'out', 'MNIST_DATA_DIR': 'data/mnist'})
  locations = config.locations()
  assert locations.data == str(tmp_path / 'data' / 'mnist')
  assert locations.pipeline_root == str(tmp_path / 'out' / 'pipelines' / 'mnist')
  assert locations.serving == str(tmp_path / 'out' / 'serving' / 'mnist')
  assert locations.metadata == str(tmp_path / 'out' / 'metadata' / 'mnist' / 'metadata.db')


def test_uri_locations_pass_through_unchanged():
  config = configs.load(environ={'MNIST_DATA_DIR': 'gs://bucket/mnist',
                                 'MNIST_SERVING_DIR': 's3://models/serving'})
  assert config.locations().data == 'gs://bucket/mnist'
  assert config.locations().serving == 's3://models/serving/mnist'


def test_portable_params_have_no_locations():
  """Kubeflow builds PipelineParams: no local folder among its fields or flags."""
  names = {f.name for f in dataclasses.fields(configs.PipelineParams)}
  assert not names & {'data_dir', 'output_dir', 'serving_dir', 'schema_path', 'min_free_mb'}
  params = configs.load(environ={'MNIST_EPOCHS': '3'}, config_class=configs.PipelineParams)
  assert type(params) is configs.PipelineParams and params.training.epochs == 3
  local = configs.load(environ={'MNIST_EPOCHS': '3'})
  assert local.params() == params


def test_presets_set_training_defaults_that_flags_still_override():
  quick = configs.load(environ={'MNIST_PRESET': 'quick'})
  assert quick.preset == 'quick'
  assert quick.training.epochs == configs.PRESETS['quick']['epochs']
  assert configs.load(environ={'MNIST_PRESET': 'quick', 'MNIST_EPOCHS': '9'}).training.epochs == 9
  with pytest.raises(ValueError, match="preset: expected one of"):
    configs.load(environ={'MNIST_PRESET': 'fastest'})
