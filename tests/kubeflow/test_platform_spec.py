"""The Kubernetes platform spec: what each KFP backend generation can parse, and nothing more.

Every executor config of a compiled spec is parsed strictly with the kfp-kubernetes proto
of the targeted backend generation (tests/kubeflow/kfp_kubernetes.py), as that backend's
driver does at launch.
"""

from __future__ import annotations

import pytest

from kubeflow import config as kfp_configs
from kubeflow import runner
from pipeline import component_ids as ids
from kubeflow.__main__ import main
from tests.kubeflow import kfp_kubernetes
from tests.kubeflow.conftest import PULL_SECRET, compile_args

TRAINER = runner.executor_label(ids.TRAINER)
MINIO_ENV = {'secretName': 'mlpipeline-minio-artifact',
             'keyToEnv': [{'secretKey': 'accesskey', 'envVar': 'AWS_ACCESS_KEY_ID'},
                          {'secretKey': 'secretkey', 'envVar': 'AWS_SECRET_ACCESS_KEY'}]}
GCS_VOLUME = {'secretName': 'gcs-key', 'mountPath': '/var/secrets/google'}


def executors(compiled):
  return compiled.platform['platforms']['kubernetes']['deploymentSpec']['executors']


@pytest.mark.parametrize('generation', sorted(kfp_kubernetes.RELEASES))
def test_each_generation_emits_only_fields_its_proto_has(generation):
  fields, errors = kfp_kubernetes.parse_strictly(generation, {})
  assert not errors
  assert set(kfp_configs.PLATFORM_FIELDS[generation]) <= set(fields)


def test_the_2_0_proto_rejects_tolerations_as_its_driver_does():
  """What failed the Trainer at launch on Kubeflow 1.8: the strict parse of tolerations."""
  config = {'tolerations': [{'key': 'nvidia.com/gpu', 'operator': 'Exists'}]}
  fields, errors = kfp_kubernetes.parse_strictly('2.0', {TRAINER: config})
  assert fields == ['secretAsVolume', 'secretAsEnv', 'pvcMount', 'nodeSelector']
  assert 'no field named "tolerations"' in errors[TRAINER]
  assert kfp_kubernetes.parse_strictly('2.2', {TRAINER: config})[1] == {}


@pytest.mark.parametrize('fixture, generation', [('compiled', '2.2'),
                                                 ('compiled_for_2_0', '2.0'),
                                                 ('compiled_with_retries', '2.4.1')])
def test_every_executor_config_parses_strictly_on_its_backend(request, fixture, generation):
  compiled = request.getfixturevalue(fixture)
  configs = executors(compiled)
  containers = {label for label, e in compiled.spec['deploymentSpec']['executors'].items()
                if 'container' in e}
  assert set(configs) == containers
  assert kfp_kubernetes.parse_strictly(generation, configs)[1] == {}


def test_backend_2_2_spec_carries_tolerations_and_pull_secrets(compiled):
  for label, settings in executors(compiled).items():
    assert settings['secretAsEnv'] == [MINIO_ENV], label
    assert settings['secretAsVolume'] == [GCS_VOLUME], label
    assert settings['imagePullSecret'] == [{'secretName': PULL_SECRET}], label
  assert [t['key'] for t in executors(compiled)[TRAINER]['tolerations']] == [
      'nvidia.com/gpu', 'pool']


def test_backend_2_0_spec_leaves_the_gpu_toleration_to_the_cluster(compiled_for_2_0):
  trainer = executors(compiled_for_2_0)[TRAINER]
  assert 'tolerations' not in trainer
  assert trainer['nodeSelector'] == {
      'labels': {'cloud.google.com/gke-accelerator': 'nvidia-tesla-t4'}}
  assert trainer['secretAsEnv'] == [MINIO_ENV]
  assert trainer['secretAsVolume'] == [GCS_VOLUME]
  assert not [s for s in executors(compiled_for_2_0).values() if 'imagePullSecret' in s]


@pytest.mark.parametrize('extra, message', [
    (['--image-pull-secrets', PULL_SECRET], 'image_pull_secrets: KFP backend 2.0 cannot'),
    (['--tolerations', 'pool=gpu:NoExecute'], 'tolerations: KFP backend 2.0 cannot'),
])
def test_backend_2_0_refuses_what_it_cannot_carry(capsys, tmp_path, extra, message):
  argv = compile_args(tmp_path / 'mnist', tmp_path / 'spec.yaml', '--kfp-backend', '2.0',
                      *extra)
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / 'spec.yaml').exists()


@pytest.mark.parametrize('overrides, message', [
    ({'kfp_backend': '1.8'}, 'kfp_backend: expected one of 2.0, 2.2'),
    ({'secret_env': 'minio:accesskey'}, 'secret_env: expected SECRET:KEY=ENV_VAR'),
    ({'secret_volumes': 'gcs-key:relative'}, 'secret_volumes: expected SECRET:/absolute/path'),
    ({'secret_volumes': 'models:/var/secrets', 'pvc_mounts': 'models:/models'},
     'each claim or Secret may be mounted once'),
])
def test_malformed_platform_settings_name_their_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    kfp_configs.KubeflowConfig(**overrides)


def test_without_a_gpu_the_2_0_backend_takes_any_tolerations_setting():
  """Tolerations are the Trainer's GPU-pool settings: with no GPU none is emitted."""
  kfp = kfp_configs.KubeflowConfig(kfp_backend='2.0', gpu_count=0, tolerations='pool=gpu')
  assert 'tolerations' not in runner.kubernetes_settings(kfp, trainer=True)


def test_task_timeouts_are_pod_deadlines_the_trainer_its_own(compiled_with_retries, compiled):
  """activeDeadlineSeconds, which the 2.1+ driver copies into the pod spec."""
  deadlines = {label: settings.get('activeDeadlineSeconds')
               for label, settings in executors(compiled_with_retries).items()}
  assert deadlines.pop(TRAINER) == '43200'
  assert set(deadlines.values()) == {'7200'}
  assert not [s for s in executors(compiled).values() if 'activeDeadlineSeconds' in s]


def test_the_2_0_proto_rejects_a_timeout_which_2_2_parses():
  config = {'activeDeadlineSeconds': '7200'}
  assert 'no field named "activeDeadlineSeconds"' in kfp_kubernetes.parse_strictly(
      '2.0', {TRAINER: config})[1][TRAINER]
  assert kfp_kubernetes.parse_strictly('2.2', {TRAINER: config})[1] == {}


@pytest.mark.parametrize('overrides, message', [
    ({'kfp_backend': '2.0', 'task_timeout': 600},
     'task_timeout and trainer_timeout: KFP backend 2.0 cannot set them'),
    ({'kfp_backend': '2.0', 'trainer_timeout': 600}, 'KFP backend 2.0 cannot set them'),
    ({'kfp_backend': '2.2', 'task_retries': 1},
     'task_retries: KFP backend 2.2 does not retry tasks'),
    ({'kfp_backend': '2.0', 'task_retries': 1}, 'Use --kfp-backend 2.4.1 on KFP 2.4.1'),
    ({'kfp_backend': '2.4.1', 'task_retries': -1}, 'task_retries must be >= 0, found -1'),
])
def test_retries_and_timeouts_are_refused_where_the_backend_would_not_apply_them(
    overrides, message):
  with pytest.raises(ValueError, match=message):
    kfp_configs.KubeflowConfig(**overrides)
