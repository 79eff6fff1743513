"""Runs of the compiled pipeline on a Kubeflow Pipelines cluster, through `kfp.Client`.

One run now (`submit`), a recurring run (`schedule`), and listing and removing recurring
runs. Every run and recurring run carries the pipeline root in its runtime config: no
backend reads the spec's `defaultPipelineRoot`; without it the driver would fall back to
the namespace's `kfp-launcher` ConfigMap, then to KFP's MinIO bucket. The requests are the KFP v2beta1 REST API calls that the installed kfp client
makes; this module adds what a command line needs around them: errors that say what
went wrong and where (unreachable host, missing spec, the server's own message), a
timeout on every request, and standard 5-field cron expressions.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

from kubeflow.config import KubeflowConfig

MAX_CONCURRENCY = 1
COMPILE_HINT = 'run `python -m kubeflow compile` first'
# KFP v2beta1 RuntimeState values after which a run changes no more.
FINAL_STATES = ('SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELED')


class KubeflowError(RuntimeError):
  """A request to Kubeflow Pipelines failed; the message is meant for the user."""


@dataclasses.dataclass
class Schedule:
  """A recurring run, as `list-schedules` prints it."""
  recurring_run_id: str
  name: str
  status: str
  cron: str
  max_concurrency: str
  no_catchup: bool
  created_at: str

  def format(self) -> str:
    catchup = 'off' if self.no_catchup else 'on'
    return (f'{self.recurring_run_id}  {self.name!r}  {self.status}  cron "{self.cron}"  '
            f'max concurrency {self.max_concurrency}  catch-up {catchup}  '
            f'created {self.created_at}')


@dataclasses.dataclass
class RunSummary:
  """A run, as `runs` and `wait` print it."""
  run_id: str
  name: str
  state: str
  created_at: Optional[datetime.datetime]
  finished_at: Optional[datetime.datetime]
  error: str = ''

  @property
  def final(self) -> bool:
    return self.state in FINAL_STATES

  def duration(self, now: Optional[datetime.datetime] = None) -> Optional[datetime.timedelta]:
    """Created to finished, or to now while it runs."""
    if self.created_at is None:
      return None
    end = self.finished_at or (None if self.final else
                               now or datetime.datetime.now(datetime.timezone.utc))
    return end - self.created_at if end else None

  def format(self, now: Optional[datetime.datetime] = None) -> str:
    duration = self.duration(now)
    took = _format_duration(duration) if duration is not None else '-'
    created = f'{self.created_at:%Y-%m-%d %H:%M:%S} UTC' if self.created_at else '-'
    error = f'  error: {self.error}' if self.error else ''
    return f'{self.run_id}  {self.name!r}  {self.state}  created {created}  took {took}{error}'


def _format_duration(duration: datetime.timedelta) -> str:
  seconds = max(0, int(duration.total_seconds()))
  hours, rest = divmod(seconds, 3600)
  return (f'{hours}h{rest // 60:02d}m{rest % 60:02d}s' if hours
          else f'{rest // 60}m{rest % 60:02d}s')


def _timestamp(value: Any) -> Optional[datetime.datetime]:
  """The API's time, or None for unset ones (the server sends the Unix epoch)."""
  if not isinstance(value, datetime.datetime) or value.year <= 1970:
    return None
  return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def _summary(run: Any) -> RunSummary:
  error = getattr(run.error, 'message', '') if run.error else ''
  return RunSummary(run_id=run.run_id, name=run.display_name or '',
                    state=str(run.state or 'PENDING'), created_at=_timestamp(run.created_at),
                    finished_at=_timestamp(run.finished_at), error=error or '')


def kfp_cron(expression: str) -> str:
  """KFP's scheduler reads cron with a leading seconds field (robfig/cron `Parse`), so a
  standard 5-field "0 3 * * *" would mean minute 3 of every hour; this adds "0 "."""
  fields = expression.split()
  if len(fields) == 5:
    return ' '.join(['0'] + fields)
  if len(fields) == 6 or (len(fields) == 1 and fields[0].startswith('@')):
    return ' '.join(fields)
  raise KubeflowError(f'cron: expected 5 fields (minute hour day-of-month month '
                      f'day-of-week, e.g. "0 3 * * *") or 6 with leading seconds, found '
                      f'{expression!r}')


def check_spec(path: str) -> str:
  if not os.path.isfile(path):
    raise KubeflowError(f'pipeline spec not found: {path} ({COMPILE_HINT}, or pass --spec-path)')
  return path


def _describe(error: Exception, host: str) -> KubeflowError:
  """Turns kfp/urllib3 exceptions into one line that says what happened and where."""
  import kfp_server_api  # pylint: disable=import-outside-toplevel
  import urllib3  # pylint: disable=import-outside-toplevel
  where = host or 'the default endpoint (KF_PIPELINES_ENDPOINT, in-cluster or kubeconfig)'
  if isinstance(error, kfp_server_api.ApiException):
    detail = (error.body or '').strip()
    try:
      body = json.loads(detail)
      detail = body.get('message') or body.get('error') or detail
    except (ValueError, AttributeError):
      pass
    if error.status in (401, 403):
      hint = (' (check --token, --cookies (oauth2_proxy_kubeflow=... on Kubeflow 1.9+, '
              'authservice_session=... on 1.8), --client-id, or --namespace on multi-user '
              'Kubeflow)')
    else:
      hint = ''
    return KubeflowError(f'Kubeflow Pipelines at {where} answered HTTP {error.status} '
                         f'{error.reason or ""}: {detail or "no details"}{hint}'.strip())
  if isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
    reason = str(getattr(error, 'reason', None) or error)
    if reason.startswith('<') and '>: ' in reason:  # urllib3 prefixes a connection repr
      reason = reason.split('>: ', 1)[1]
    return KubeflowError(f'cannot reach Kubeflow Pipelines at {where}: {reason} '
                         f'(check --host / KFP_HOST, e.g. `kubectl port-forward -n kubeflow '
                         f'svc/ml-pipeline-ui 8080:80` then --host http://localhost:8080)')
  return KubeflowError(f'Kubeflow Pipelines at {where}: {type(error).__name__}: {error}')


def connect(kfp_config: KubeflowConfig):
  """A kfp.Client for the configured host and auth, with request timeouts."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', FutureWarning)
    import kfp  # pylint: disable=import-outside-toplevel

  class Client(kfp.Client):
    """kfp.Client whose requests time out, and whose health check fails at once
    (kfp retries it five times, five seconds apart)."""

    def _add_timeouts(self) -> None:
      rest = self._healthz_api.api_client.rest_client
      if getattr(rest, 'mnist_timeout', None):
        return
      request = rest.request
      timeout = (kfp_config.timeout, kfp_config.timeout)  # (connect, read): floats OK

      def request_with_timeout(*args, _request_timeout=None, **kwargs):
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

      rest.request = request_with_timeout
      rest.mnist_timeout = timeout

    def get_kfp_healthz(self, sleep_duration: int = 5):  # pylint: disable=unused-argument
      self._add_timeouts()
      return self._healthz_api.get_healthz()

  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', FutureWarning)
      client = Client(
          host=kfp_config.host or None, namespace=kfp_config.namespace or 'kubeflow',
          existing_token=kfp_config.token or None, cookies=kfp_config.cookies or None,
          client_id=kfp_config.client_id or None,
          other_client_id=kfp_config.other_client_id or None,
          other_client_secret=kfp_config.other_client_secret or None,
          ssl_ca_cert=kfp_config.ssl_ca_cert or None, verify_ssl=kfp_config.verify_ssl)
    client._add_timeouts()  # pylint: disable=protected-access
    return client
  except KubeflowError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _describe(e, kfp_config.host) from e


def _call(kfp_config: KubeflowConfig, fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except KubeflowError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _describe(e, kfp_config.host) from e


def _namespace(kfp_config: KubeflowConfig) -> Optional[str]:
  return kfp_config.namespace or None


def experiment_id(client, kfp_config: KubeflowConfig, name: str, create: bool) -> Optional[str]:
  """The experiment's id; created if missing and `create`, else None if missing."""
  if create:
    experiment = _call(kfp_config, client.create_experiment, name,
                       namespace=_namespace(kfp_config))
    return experiment.experiment_id
  try:
    experiment = _call(kfp_config, client.get_experiment, experiment_name=name,
                       namespace=_namespace(kfp_config))
  except KubeflowError as e:
    if 'No experiment is found' in str(e):
      return None
    raise
  return experiment.experiment_id


def submit(kfp_config: KubeflowConfig, spec_path: str, experiment: str, run_name: str,
           enable_caching: Optional[bool] = None,
           params: Optional[Dict[str, Any]] = None) -> Any:
  """One run of the compiled spec now; returns the V2beta1Run. `params`: the run's
  pipeline parameters (runtime_config.parameters; kubeflow/params.py checks them)."""
  check_spec(spec_path)
  client = connect(kfp_config)
  exp_id = experiment_id(client, kfp_config, experiment, create=True)
  return _call(kfp_config, client.run_pipeline, experiment_id=exp_id, job_name=run_name,
               pipeline_package_path=spec_path, enable_caching=enable_caching,
               pipeline_root=kfp_config.pipeline_root, params=params or None,
               service_account=kfp_config.service_account or None)


def schedule(kfp_config: KubeflowConfig, spec_path: str, experiment: str, name: str,
             cron: str, max_concurrency: int = MAX_CONCURRENCY, catchup: bool = False,
             enable_caching: Optional[bool] = None,
             description: str = '',
             params: Optional[Dict[str, Any]] = None) -> Tuple[Any, List[str]]:
  """A recurring run of the compiled spec, replacing the experiment's recurring runs of the
  same name (so scheduling again updates it, never doubles it). Returns the new
  V2beta1RecurringRun and the ids it replaced; the old ones go only once the new one
  exists."""
  cron = kfp_cron(cron)
  if max_concurrency < 1:
    raise KubeflowError(f'max concurrency must be >= 1, found {max_concurrency}')
  check_spec(spec_path)
  replaced = [s.recurring_run_id for s in list_schedules(kfp_config, experiment)
              if s.name == name]
  client = connect(kfp_config)
  exp_id = experiment_id(client, kfp_config, experiment, create=True)
  created = _call(kfp_config, client.create_recurring_run, experiment_id=exp_id,
                  job_name=name, description=description or None, cron_expression=cron,
                  max_concurrency=max_concurrency, no_catchup=not catchup,
                  pipeline_package_path=spec_path, enable_caching=enable_caching,
                  pipeline_root=kfp_config.pipeline_root, params=params or None,
                  service_account=kfp_config.service_account or None)
  for old in replaced:
    _call(kfp_config, client.delete_recurring_run, old)
  return created, replaced


def list_runs(kfp_config: KubeflowConfig, experiment: str, limit: int = 10) -> List[RunSummary]:
  """The experiment's most recent runs, newest first."""
  if limit < 1:
    raise KubeflowError(f'limit must be >= 1, found {limit}')
  client = connect(kfp_config)
  exp_id = experiment_id(client, kfp_config, experiment, create=False)
  if exp_id is None:
    return []
  page = _call(kfp_config, client.list_runs, page_size=limit, sort_by='created_at desc',
               experiment_id=exp_id)
  return [_summary(run) for run in page.runs or []]


def wait(kfp_config: KubeflowConfig, run_id: str, timeout: float, poll_seconds: float = 15.0,
         report: Callable[[RunSummary], None] = lambda _: None) -> RunSummary:
  """Polls the run until it ends (SUCCEEDED, FAILED, ...); `report` sees each state change.
  Raises KubeflowError if it is still going after `timeout` seconds."""
  client = connect(kfp_config)
  deadline = time.monotonic() + timeout
  state = ''
  while True:
    run = _summary(_call(kfp_config, client.get_run, run_id))
    if run.state != state:
      state = run.state
      report(run)
    if run.final:
      return run
    if time.monotonic() + poll_seconds > deadline:
      raise KubeflowError(f'run {run_id} is still {run.state} after {timeout:g} s '
                          f'(see `python -m kubeflow runs`)')
    time.sleep(poll_seconds)


def list_schedules(kfp_config: KubeflowConfig, experiment: str) -> List[Schedule]:
  """The experiment's recurring runs (all pages)."""
  client = connect(kfp_config)
  exp_id = experiment_id(client, kfp_config, experiment, create=False)
  if exp_id is None:
    return []
  result, token = [], ''
  while True:
    page = _call(kfp_config, client.list_recurring_runs, page_token=token, page_size=100,
                 experiment_id=exp_id)
    for run in page.recurring_runs or []:
      cron = run.trigger.cron_schedule.cron if (
          run.trigger and run.trigger.cron_schedule) else ''
      result.append(Schedule(
          recurring_run_id=run.recurring_run_id, name=run.display_name or '',
          status=str(run.status or run.mode or ''), cron=cron or '',
          max_concurrency=str(run.max_concurrency or ''), no_catchup=bool(run.no_catchup),
          created_at=str(run.created_at or '')))
    token = page.next_page_token or ''
    if not token:
      return result


def unschedule(kfp_config: KubeflowConfig, experiment: str, name_or_id: str) -> List[str]:
  """Deletes the recurring run with that id, or all with that name; returns their ids."""
  matches = [s for s in list_schedules(kfp_config, experiment)
             if name_or_id in (s.recurring_run_id, s.name)]
  if not matches:
    raise KubeflowError(f'no recurring run named or with id {name_or_id!r} in experiment '
                        f'{experiment!r} (see `python -m kubeflow list-schedules`)')
  client = connect(kfp_config)
  for match in matches:
    _call(kfp_config, client.delete_recurring_run, match.recurring_run_id)
  return [m.recurring_run_id for m in matches]
