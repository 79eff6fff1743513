"""`submit`/`schedule --param NAME=VALUE`: a run's pipeline parameters, checked against the
compiled spec and sent as the run's runtime config, to a recording loopback KFP API that
validates them as the real API server does (fake_kfp.parameter_problem)."""

from __future__ import annotations

import pytest

from kubeflow import params
from tests.kubeflow.test_client import cli


def test_submit_sends_the_parameters_typed_in_the_runtime_config(capsys, fake_kfp, compiled):
  code, out, err = cli(capsys, fake_kfp, compiled, 'submit', '--param', 'epochs=5',
                       '--param', 'learning_rate=1e-3', '--param', 'accuracy_threshold=0.98',
                       '--param', 'data_uri=gs://bucket/fashion-mnist')
  assert code == 0, err
  assert 'Submitted run run-1' in out
  (run,) = fake_kfp.calls('POST', '/runs')
  sent = run.body['runtime_config']['parameters']
  assert sent == {'epochs': 5, 'learning_rate': 0.001, 'accuracy_threshold': 0.98,
                  'data_uri': 'gs://bucket/fashion-mnist'}
  assert isinstance(sent['epochs'], int)


def test_schedule_sends_them_with_the_recurring_run(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *',
                     '--param', 'epochs=3')
  assert code == 0, err
  (request,) = fake_kfp.calls('POST', '/recurringruns')
  assert request.body['runtime_config']['parameters'] == {'epochs': 3}


def test_without_params_the_run_takes_the_compiled_defaults(capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'submit')[0] == 0
  (run,) = fake_kfp.calls('POST', '/runs')
  assert not run.body['runtime_config'].get('parameters')


@pytest.mark.parametrize('argv, message', [
    (['--param', 'batch_size=64'], '--param batch_size: not a parameter of'),
    (['--param', 'epochs=five'], "--param epochs: expected a whole number, found 'five'"),
    (['--param', 'epochs=2.5'], "expected a whole number, found '2.5'"),
    (['--param', 'epochs=0'], "--param epochs: must be >= 1, found '0'"),
    (['--param', 'learning_rate=fast'], "--param learning_rate: expected a number"),
    (['--param', 'accuracy_threshold=99'], 'must be within [0, 1]'),
    (['--param', 'epochs'], "expected NAME=VALUE, found 'epochs'"),
    (['--param', 'epochs=1', '--param', 'epochs=2'], '--param epochs: given twice'),
    (['--param', 'data_uri=s3://bucket/mnist'], 'cannot be read in the pods'),
    (['--param', 'data_uri=/data/mnist'], 'cannot be read in the pods'),
])
def test_a_bad_param_is_refused_before_any_request(capsys, fake_kfp, compiled, argv, message):
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit', *argv)
  assert code == 1
  assert message in err
  assert not fake_kfp.requests


def test_an_unknown_name_lists_the_known_ones(capsys, fake_kfp, compiled):
  _, _, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *',
                  '--param', 'epoch=5')
  assert ('its parameters: accuracy_threshold, data_uri, epochs, learning_rate' in err), err


def test_a_data_uri_on_the_mounted_pvc_is_accepted(compiled):
  inside = f'{compiled.data_dir.parent}/fashion-mnist'
  assert params.parse_params(str(compiled.path), [f'data_uri={inside}']) == {'data_uri': inside}


@pytest.mark.parametrize('parameters, message', [
    ({'batch_size': 64}, 'parameter(s) provided are not required by pipeline: batch_size'),
    ({'epochs': '5'}, 'input parameter epochs requires type double or integer'),
    ({'data_uri': 5}, 'input parameter data_uri requires type string'),
])
def test_the_fake_api_refuses_what_the_api_server_refuses(fake_kfp, compiled, parameters,
                                                          message):
  """backend 2.0.0/2.2.0 template/v2_template.go validatePipelineJobInputs."""
  import kfp  # pylint: disable=import-outside-toplevel
  import kfp_server_api  # pylint: disable=import-outside-toplevel
  with pytest.raises(kfp_server_api.ApiException) as error:
    kfp.Client(host=fake_kfp.host).run_pipeline(
        experiment_id='exp-1', job_name='bad params', params=parameters,
        pipeline_package_path=str(compiled.path), pipeline_root='gs://b/root')
  assert error.value.status == 400 and message in error.value.body
