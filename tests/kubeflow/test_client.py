"""submit / schedule / list-schedules / unschedule against a recording loopback KFP API.

The bodies checked are the KFP v2beta1 REST API's (Run, RecurringRun) as the installed
kfp client sends them; failures must come back as one clear line and exit code 1.
"""

from __future__ import annotations

import socket
import time

import pytest

from kubeflow import client
from kubeflow.__main__ import main
from tests.kubeflow.conftest import PIPELINE_ROOT


def run_version(fake_kfp, request):
  """The uploaded pipeline version a run or recurring run request references."""
  reference = request.body['pipeline_version_reference']
  (version,) = [v for v in fake_kfp.versions
                if v.pipeline_version_id == reference['pipeline_version_id']]
  assert reference['pipeline_id'] == version.pipeline_id
  return version


def cli(capsys, fake_kfp, compiled, *argv):
  """Runs `python -m kubeflow ...` in-process; returns (exit code, stdout, stderr)."""
  code = main([*argv[:1], '--host', fake_kfp.host, '--spec-path', str(compiled.path),
               *argv[1:]])
  out, err = capsys.readouterr()
  return code, out, err


def test_submit_sends_the_compiled_spec_as_one_run(capsys, fake_kfp, compiled):
  code, out, err = cli(capsys, fake_kfp, compiled, 'submit', '--run-name', 'nightly check',
                       '--service-account', 'pipeline-runner', '--token', 's3cret')
  assert code == 0, err
  assert "Submitted run run-1 ('nightly check') in experiment 'mnist'" in out
  created = fake_kfp.calls('POST', '/experiments')
  assert [r.body['display_name'] for r in created] == ['mnist']
  (run,) = fake_kfp.calls('POST', '/runs')
  assert run.body['display_name'] == 'nightly check'
  assert run.body['experiment_id'] == 'exp-1'
  assert run.body['service_account'] == 'pipeline-runner'
  assert 'pipeline_spec' not in run.body  # it runs the version uploaded just before
  assert run_version(fake_kfp, run).pipeline_spec == {'pipeline_spec': compiled.spec,
                                                      'platform_spec': compiled.platform}
  assert run.body['runtime_config']['pipeline_root'] == PIPELINE_ROOT  # never read from the spec
  assert run.headers['authorization'] == 'Bearer s3cret'


def test_every_run_and_recurring_run_carries_the_configured_pipeline_root(
    capsys, fake_kfp, compiled):
  """No backend reads the spec's defaultPipelineRoot: only the runtime config counts."""
  root = 'gs://artifacts-bucket/pipelines'
  assert cli(capsys, fake_kfp, compiled, 'submit', '--pipeline-root', root)[0] == 0
  assert cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *',
             '--pipeline-root', root)[0] == 0
  sent = fake_kfp.calls('POST', '/runs') + fake_kfp.calls('POST', '/recurringruns')
  assert [r.body['runtime_config']['pipeline_root'] for r in sent] == [root, root]


def test_the_fake_api_refuses_a_run_without_a_pipeline_root(fake_kfp, compiled):
  import kfp  # pylint: disable=import-outside-toplevel
  import kfp_server_api  # pylint: disable=import-outside-toplevel
  with pytest.raises(kfp_server_api.ApiException) as error:
    kfp.Client(host=fake_kfp.host).run_pipeline(
        experiment_id='exp-1', job_name='no root', pipeline_package_path=str(compiled.path))
  assert error.value.status == 400 and 'kfp-launcher' in error.value.body


def test_submit_without_cache_turns_caching_off_for_every_task(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit', '--no-cache')
  assert code == 0, err
  (run,) = fake_kfp.calls('POST', '/runs')
  version = run_version(fake_kfp, run)  # a run of a version cannot change caching
  tasks = version.pipeline_spec['pipeline_spec']['root']['dag']['tasks']
  assert {t['cachingOptions'].get('enableCache', False) for t in tasks.values()} == {False}
  assert version.pipeline_spec['platform_spec'] == compiled.platform
  assert version.display_name.endswith('-no-cache')


def test_schedule_creates_a_nightly_recurring_run_one_at_a_time_without_catchup(
    capsys, fake_kfp, compiled):
  code, out, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *',
                       '--name', 'mnist nightly', '--cookies', 'authservice_session=abc')
  assert code == 0, err
  assert 'Scheduled rr-1' in out and 'cron "0 0 3 * * *"' in out
  (request,) = fake_kfp.calls('POST', '/recurringruns')
  body = request.body
  assert body['display_name'] == 'mnist nightly'
  assert body['experiment_id'] == 'exp-1'
  assert body['mode'] == 'ENABLE'
  assert body['trigger'] == {'cron_schedule': {'cron': '0 0 3 * * *'}}
  assert body['max_concurrency'] == 1
  assert body['no_catchup'] is True
  assert run_version(fake_kfp, request).pipeline_spec == {'pipeline_spec': compiled.spec,
                                                          'platform_spec': compiled.platform}
  assert body['runtime_config']['pipeline_root'] == PIPELINE_ROOT
  assert request.headers['cookie'] == 'authservice_session=abc'


def test_schedule_options_reach_the_request(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '30 0 3 * * 1-5',
                     '--max-concurrency', '2', '--catchup')
  assert code == 0, err
  (request,) = fake_kfp.calls('POST', '/recurringruns')
  assert request.body['trigger']['cron_schedule']['cron'] == '30 0 3 * * 1-5'
  assert (request.body['max_concurrency'], request.body['no_catchup']) == (2, False)


def test_list_and_unschedule_by_name(capsys, fake_kfp, compiled):
  for cron in ('0 3 * * *', '0 15 * * *'):
    assert cli(capsys, fake_kfp, compiled, 'schedule', '--cron', cron)[0] == 0
  code, out, _ = cli(capsys, fake_kfp, compiled, 'list-schedules')
  assert code == 0
  assert "rr-1  'mnist schedule 0 3 * * *'  ENABLED  cron \"0 0 3 * * *\"" in out
  assert 'rr-2' in out and 'max concurrency 1  catch-up off' in out
  listed = fake_kfp.calls('GET', '/recurringruns')[-1]
  assert listed.query['experiment_id'] == ['exp-1']

  code, out, _ = cli(capsys, fake_kfp, compiled, 'unschedule', 'mnist schedule 0 3 * * *')
  assert (code, out.strip()) == (0, 'Deleted recurring run rr-1')
  assert [r.path for r in fake_kfp.calls('DELETE')] == ['/apis/v2beta1/recurringruns/rr-1']
  code, out, _ = cli(capsys, fake_kfp, compiled, 'unschedule', 'rr-2')
  assert code == 0
  code, out, _ = cli(capsys, fake_kfp, compiled, 'list-schedules')
  assert "No recurring runs in experiment 'mnist'" in out


def test_unschedule_of_an_unknown_schedule_says_so(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'unschedule', 'weekly')
  assert code == 1
  assert "error: no recurring run named or with id 'weekly'" in err


@pytest.mark.parametrize('status, message, expected', [
    (400, 'Failed to create a run: resolver executors not implemented',
     'answered HTTP 400 Bad Request: Failed to create a run: resolver executors'),
    (403, 'RBAC: access denied', 'HTTP 403 Forbidden: RBAC: access denied (check --token'),
    (401, 'Unauthorized', '--cookies (oauth2_proxy_kubeflow=... on Kubeflow 1.9+, '
                          'authservice_session=... on 1.8)'),
])
def test_server_errors_surface_as_one_clear_line(capsys, fake_kfp, compiled, status,
                                                 message, expected):
  fake_kfp.fail('POST', '/runs', status, message)
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit')
  assert code == 1
  assert err.startswith(f'error: Kubeflow Pipelines at {fake_kfp.host} ')
  assert expected in err
  assert 'Traceback' not in err


def test_a_failing_health_check_fails_at_once(capsys, fake_kfp, compiled):
  fake_kfp.fail('GET', '/healthz', 503, 'upstream connect error')
  start = time.monotonic()
  code, _, err = cli(capsys, fake_kfp, compiled, 'list-schedules')
  assert code == 1 and 'HTTP 503' in err and 'upstream connect error' in err
  assert time.monotonic() - start < 5  # kfp alone retries 5 times, 5 s apart


def test_unreachable_host_is_a_clear_error(capsys, fake_kfp, compiled):
  with socket.socket() as probe:  # a port nothing listens on
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  code = main(['submit', '--host', f'http://127.0.0.1:{port}', '--spec-path',
               str(compiled.path)])
  err = capsys.readouterr().err
  assert code == 1
  assert f'error: cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}' in err
  assert 'Connection refused' in err and 'KFP_HOST' in err


def test_a_silent_server_times_out(capsys, fake_kfp, compiled):
  with socket.socket() as silent:  # accepts connections, never answers
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    host = f'http://127.0.0.1:{silent.getsockname()[1]}'
    start = time.monotonic()
    code = main(['list-schedules', '--host', host, '--timeout', '0.3'])
  err = capsys.readouterr().err
  assert code == 1 and f'cannot reach Kubeflow Pipelines at {host}' in err
  assert 'timed out' in err
  assert time.monotonic() - start < 10


def test_a_missing_spec_is_reported_before_any_request(capsys, fake_kfp, tmp_path):
  missing = tmp_path / 'never-compiled.yaml'
  code = main(['submit', '--host', fake_kfp.host, '--spec-path', str(missing)])
  err = capsys.readouterr().err
  assert code == 1
  assert f'error: pipeline spec not found: {missing} (run `python -m kubeflow compile`' in err
  assert not fake_kfp.requests


@pytest.mark.parametrize('given, sent', [
    ('0 3 * * *', '0 0 3 * * *'), ('*/15 * * * *', '0 */15 * * * *'),
    ('0 0 3 * * *', '0 0 3 * * *'), ('@daily', '@daily')])
def test_cron_gets_the_seconds_field_kfp_expects(given, sent):
  assert client.kfp_cron(given) == sent


def test_a_malformed_cron_is_refused_before_any_request(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '3am daily')
  assert code == 1 and 'cron: expected 5 fields' in err
  assert not fake_kfp.requests


def test_scheduling_again_under_the_same_name_replaces_the_recurring_run(
    capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *',
             '--name', 'nightly')[0] == 0
  assert cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 4 * * *',
             '--name', 'other')[0] == 0
  code, out, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 5 * * *',
                       '--name', 'nightly')
  assert code == 0, err
  assert 'Scheduled rr-3' in out and 'replaced rr-1' in out
  assert [r.path for r in fake_kfp.calls('DELETE')] == ['/apis/v2beta1/recurringruns/rr-1']
  assert [(r['recurring_run_id'], r['display_name']) for r in fake_kfp.recurring_runs] == [
      ('rr-2', 'other'), ('rr-3', 'nightly')]


def test_a_failed_replacement_keeps_the_old_recurring_run(capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *')[0] == 0
  fake_kfp.fail('POST', '/recurringruns', 400, 'invalid cron')
  assert cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *')[0] == 1
  assert not fake_kfp.calls('DELETE')
  assert [r['recurring_run_id'] for r in fake_kfp.recurring_runs] == ['rr-1']


def test_runs_lists_recent_runs_with_state_and_duration(capsys, fake_kfp, compiled):
  for name in ('first', 'second', 'third'):
    assert cli(capsys, fake_kfp, compiled, 'submit', '--run-name', name)[0] == 0
  fake_kfp.runs[0].update(state='SUCCEEDED', finished_at='2025-01-01T03:14:05Z')
  fake_kfp.runs[1].update(state='FAILED', finished_at='2025-01-01T03:02:31Z',
                          error={'message': 'Trainer: OOMKilled'})
  fake_kfp.runs[2].update(state='RUNNING', finished_at='1970-01-01T00:00:00Z')
  code, out, err = cli(capsys, fake_kfp, compiled, 'runs', '--limit', '2')
  assert code == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 2  # newest first, as many as asked for
  assert lines[0].startswith("run-3  'third'  RUNNING  created 2025-01-01 03:00:02 UTC  took ")
  assert lines[1] == ("run-2  'second'  FAILED  created 2025-01-01 03:00:01 UTC  took 2m30s"
                      "  error: Trainer: OOMKilled")
  (listed,) = fake_kfp.calls('GET', '/runs')
  assert listed.query['sort_by'] == ['created_at desc']
  assert listed.query['experiment_id'] == ['exp-1']
  code, out, _ = cli(capsys, fake_kfp, compiled, 'runs')
  assert "run-1  'first'  SUCCEEDED  created 2025-01-01 03:00:00 UTC  took 14m05s" in out


@pytest.mark.parametrize('final, code', [('SUCCEEDED', 0), ('FAILED', 1), ('CANCELED', 1)])
def test_wait_follows_a_run_to_its_end_and_exits_by_its_outcome(capsys, fake_kfp, compiled,
                                                                 final, code):
  assert cli(capsys, fake_kfp, compiled, 'submit')[0] == 0
  fake_kfp.progress['run-1'] = ['PENDING', 'RUNNING', 'RUNNING', final]
  assert cli(capsys, fake_kfp, compiled, 'wait', 'run-1', '--poll', '0.01')[0] == code
  states = [r for r in fake_kfp.calls('GET') if r.path.endswith('/runs/run-1')]
  assert len(states) == 4  # polled until the final state, no further


def test_wait_reports_each_state_change_once(capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'submit')[0] == 0
  fake_kfp.progress['run-1'] = ['RUNNING', 'RUNNING', 'SUCCEEDED']
  code, out, _ = cli(capsys, fake_kfp, compiled, 'wait', 'run-1', '--poll', '0.01')
  assert code == 0
  assert [line.split('  ')[2] for line in out.strip().splitlines()] == ['RUNNING', 'SUCCEEDED']


def test_wait_gives_up_after_its_timeout(capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'submit')[0] == 0
  fake_kfp.progress['run-1'] = ['RUNNING']
  start = time.monotonic()
  code, _, err = cli(capsys, fake_kfp, compiled, 'wait', 'run-1', '--poll', '0.05',
                     '--wait-timeout', '0.3')
  assert code == 1 and 'error: run run-1 is still RUNNING after 0.3 s' in err
  assert time.monotonic() - start < 5


def test_wait_for_an_unknown_run_says_so(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'wait', 'run-9', '--poll', '0.01')
  assert code == 1 and 'HTTP 404' in err and 'Run run-9 not found' in err
