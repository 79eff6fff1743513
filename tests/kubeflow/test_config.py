"""KubeflowConfig: defaults < MNIST_KFP_* environment < flags, and its parsed settings."""

import argparse

import pytest

from kubeflow import config


def parse(argv, environ=None) -> config.KubeflowConfig:
  parser = argparse.ArgumentParser()
  config.add_arguments(parser)
  return config.load(parser.parse_args(argv), environ=environ or {})


def test_defaults_target_the_open_source_install():
  cfg = parse([])
  assert cfg.pipeline_root == 'minio://mlpipeline/v2/artifacts'
  assert (cfg.gpu_count, cfg.gpu_resource) == (1, 'nvidia.com/gpu')
  assert cfg.trainer_image == cfg.image
  assert cfg.spec_file('mnist').endswith('outputs/kubeflow/mnist.yaml')
  assert cfg.experiment_name('mnist') == 'mnist'


def test_environment_overrides_defaults_and_flags_override_environment():
  env = {'MNIST_KFP_IMAGE': 'env/image:1', 'MNIST_KFP_GPU_COUNT': '4',
         'MNIST_KFP_VERIFY_SSL': 'false', 'MNIST_KFP_CPU_LIMIT': '1.5'}
  cfg = parse(['--gpu-count', '2'], env)
  assert (cfg.image, cfg.gpu_count, cfg.verify_ssl, cfg.cpu_limit) == (
      'env/image:1', 2, False, 1.5)


def test_host_comes_from_kfp_host_unless_the_project_variable_is_set():
  assert parse([], {'KFP_HOST': 'http://a:8080'}).host == 'http://a:8080'
  assert parse([], {'KFP_HOST': 'http://a', 'MNIST_KFP_HOST': 'http://b'}).host == 'http://b'
  assert parse(['--host', 'http://c'], {'KFP_HOST': 'http://a'}).host == 'http://c'


def test_gpu_pool_settings_become_node_selector_and_tolerations():
  cfg = parse(['--gpu-type', 'nvidia-l4', '--node-selector', 'pool=gpu, zone=a',
               '--tolerations', 'nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute,spot'])
  assert cfg.node_selector_labels() == {
      'cloud.google.com/gke-accelerator': 'nvidia-l4', 'pool': 'gpu', 'zone': 'a'}
  assert cfg.toleration_list() == [
      {'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'},
      {'key': 'dedicated', 'operator': 'Equal', 'value': 'ml', 'effect': 'NoExecute'},
      {'key': 'spot', 'operator': 'Exists'}]
  assert parse(['--pvc-mounts', 'data:/mnt/data/,models:/models']).pvc_volumes() == [
      ('data', '/mnt/data'), ('models', '/models')]


@pytest.mark.parametrize('argv, message', [
    (['--pipeline-root', '/local/folder'], 'pipeline_root: expected object storage'),
    (['--gpu-count', 'two'], 'invalid value for gpu_count'),
    (['--gpu-count', '-1'], 'gpu_count must be >= 0'),
    (['--pvc-mounts', 'data'], 'pvc_mounts: expected NAME:/absolute/path'),
    (['--node-selector', 'pool'], 'node_selector: expected KEY=VALUE'),
    (['--tolerations', 'gpu:NoWhere'], 'tolerations: expected KEY[=VALUE][:EFFECT]'),
])
def test_bad_values_are_rejected_with_the_field_name(argv, message):
  with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
    parse(argv)
