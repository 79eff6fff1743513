"""Runs of the compiled pipeline on a Kubeflow Pipelines cluster, through `kfp.Client`.

The compiled spec registered as a pipeline version (`upload`), one run now (`submit`), a
recurring run (`schedule`), both of a pipeline version, and listing and removing recurring
runs. Every run and recurring run carries the pipeline root in its runtime config: no
backend reads the spec's `defaultPipelineRoot`; without it the driver would fall back to
the namespace's `kfp-launcher` ConfigMap, then to KFP's MinIO bucket. The requests are
the KFP v2beta1 REST API calls that the installed kfp client makes; this module adds
what a command line needs around them: errors that say what went wrong and where
(unreachable host, missing spec, the server's own message), a timeout on every request,
and standard 5-field cron expressions.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

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
      detail = (body.get('message') or body.get('error')  # the upload routes say
                or body.get('error_message') or detail)  # error_message
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
           version: Optional['PipelineVersion'] = None,
           params: Optional[Dict[str, Any]] = None) -> Any:
  """One run now, of the pipeline version if given, else of the compiled spec itself;
  returns the V2beta1Run. `params`: the run's pipeline parameters
  (runtime_config.parameters; kubeflow/params.py checks them)."""
  source = run_source(spec_path, version, enable_caching)
  client = connect(kfp_config)
  exp_id = experiment_id(client, kfp_config, experiment, create=True)
  return _call(kfp_config, client.run_pipeline, experiment_id=exp_id, job_name=run_name,
               **source, pipeline_root=kfp_config.pipeline_root, params=params or None,
               service_account=kfp_config.service_account or None)


def schedule(kfp_config: KubeflowConfig, spec_path: str, experiment: str, name: str,
             cron: str, max_concurrency: int = MAX_CONCURRENCY, catchup: bool = False,
             enable_caching: Optional[bool] = None, description: str = '',
             version: Optional['PipelineVersion'] = None,
             params: Optional[Dict[str, Any]] = None) -> Tuple[Any, List[str]]:
  """A recurring run of the compiled spec, replacing the experiment's recurring runs of the
  same name (so scheduling again updates it, never doubles it). Returns the new
  V2beta1RecurringRun and the ids it replaced; the old ones go only once the new one
  exists. Runs the pipeline version if given, else the compiled spec itself."""
  cron = kfp_cron(cron)
  if max_concurrency < 1:
    raise KubeflowError(f'max concurrency must be >= 1, found {max_concurrency}')
  source = run_source(spec_path, version, enable_caching)
  replaced = [s.recurring_run_id for s in list_schedules(kfp_config, experiment)
              if s.name == name]
  client = connect(kfp_config)
  exp_id = experiment_id(client, kfp_config, experiment, create=True)
  created = _call(kfp_config, client.create_recurring_run, experiment_id=exp_id,
                  job_name=name, description=description or None, cron_expression=cron,
                  max_concurrency=max_concurrency, no_catchup=not catchup, **source,
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


# ---------------------------------------------------------------------------
# Pipelines and their versions. A run or recurring run that references a pipeline
# version shows in the UI under that version, so the pipeline's page lists what ran when.

LATEST = 'latest'  # --pipeline-version latest: the pipeline's newest version


@dataclasses.dataclass
class PipelineVersion:
  """A version of a pipeline on the server, as `upload` and `--pipeline-version` find it."""
  pipeline_id: str
  pipeline_name: str
  version_id: str
  name: str
  created_at: Optional[datetime.datetime] = None

  def format(self) -> str:
    return (f'{self.name!r} ({self.version_id}) of pipeline {self.pipeline_name!r} '
            f'({self.pipeline_id})')


def git_revision(repo: Path) -> str:
  """`git rev-parse --short HEAD`, with `-dirty` if tracked files have uncommitted changes
  (as `git describe --dirty` counts them); '' where git or the checkout is missing."""
  def git(*args: str) -> Optional[str]:
    try:
      done = subprocess.run(['git', *args], cwd=repo, capture_output=True, text=True,
                            timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
      return None
    return done.stdout.strip() if done.returncode == 0 else None

  head = git('rev-parse', '--short', 'HEAD')
  if not head:
    return ''
  changes = git('status', '--porcelain', '--untracked-files=no')
  return head + ('-dirty' if changes else '')


def version_name(revision: str, now: datetime.datetime) -> str:
  """The default version name: the commit the spec was compiled from, then UTC time, so
  names are unique and say what and when; `no-git` where no commit is known."""
  return f'{revision or "no-git"}-{now.astimezone(datetime.timezone.utc):%Y%m%d-%H%M%S}'


def run_source(spec_path: str, version: Optional[PipelineVersion],
               enable_caching: Optional[bool]) -> Dict[str, Any]:
  """What a run is made of, as kfp.Client takes it: the version's ids (caching is part of
  the version's spec then), else the compiled spec sent inline."""
  if version is not None:
    return {'pipeline_id': version.pipeline_id, 'version_id': version.version_id}
  return {'pipeline_package_path': check_spec(spec_path), 'enable_caching': enable_caching}


def find_pipeline(client, kfp_config: KubeflowConfig, name: str) -> Optional[str]:
  """The id of the pipeline with that name (in --namespace if set), or None."""
  predicate = {'operation': 'EQUALS', 'key': 'display_name', 'stringValue': name}
  page = _call(kfp_config, client.list_pipelines, page_size=2,
               filter=json.dumps({'predicates': [predicate]}),
               namespace=_namespace(kfp_config))
  found = page.pipelines or []
  if len(found) > 1:
    raise KubeflowError(f'{len(found)} pipelines are named {name!r}: expected one')
  return found[0].pipeline_id if found else None


def _versions(client, kfp_config: KubeflowConfig, pipeline_id: str) -> Iterator[Any]:
  """The pipeline's versions, newest first (all pages)."""
  token = ''
  while True:
    page = _call(kfp_config, client.list_pipeline_versions, pipeline_id=pipeline_id,
                 page_token=token, page_size=100, sort_by='created_at desc')
    yield from page.pipeline_versions or []
    token = page.next_page_token or ''
    if not token:
      return


def _version(pipeline_name: str, version: Any) -> PipelineVersion:
  return PipelineVersion(pipeline_id=version.pipeline_id, pipeline_name=pipeline_name,
                         version_id=version.pipeline_version_id,
                         name=version.display_name or '',
                         created_at=_timestamp(version.created_at))


def upload(kfp_config: KubeflowConfig, spec_path: str, pipeline_name: str, name: str,
           description: str = '', enable_caching: Optional[bool] = None,
           exact_name: bool = False) -> Tuple[PipelineVersion, bool]:
  """Uploads the compiled spec (both YAML documents, as the file holds them) as version
  `name` of the pipeline, creating the pipeline first if missing. A name the pipeline's
  newest versions already use gets `-2`, `-3`, ... (two uploads in one second), or is
  refused if `exact_name`. `enable_caching`, if not None, is written into the uploaded
  copy's tasks (a run of a version cannot change it). Returns the version and whether the
  pipeline was created."""
  check_spec(spec_path)
  client = connect(kfp_config)
  pipeline_id = find_pipeline(client, kfp_config, pipeline_name)
  created = pipeline_id is None
  if not created:
    page = _call(kfp_config, client.list_pipeline_versions, pipeline_id=pipeline_id,
                 page_size=100, sort_by='created_at desc')
    taken = {v.display_name for v in page.pipeline_versions or []}
    if exact_name and name in taken:
      raise KubeflowError(f'pipeline {pipeline_name!r} already has a version named {name!r}: '
                          f'choose another --version-name')
    base, count = name, 1
    while name in taken:
      count += 1
      name = f'{base}-{count}'
  if created:
    # Not the upload route: it would also make a first version named after the pipeline.
    import kfp_server_api  # pylint: disable=import-outside-toplevel
    pipeline = _call(kfp_config, client._pipelines_api.create_pipeline,  # pylint: disable=protected-access
                     body=kfp_server_api.V2beta1Pipeline(
                         display_name=pipeline_name, description=description or None,
                         namespace=_namespace(kfp_config)))
    pipeline_id = pipeline.pipeline_id
  with tempfile.TemporaryDirectory() as folder:
    path = spec_path if enable_caching is None else _with_caching(spec_path, enable_caching,
                                                                  Path(folder))
    version = _call(kfp_config, client.upload_pipeline_version, path, name,
                    pipeline_id=pipeline_id, description=description or None)
  return _version(pipeline_name, version), created


def _with_caching(spec_path: str, enable_caching: bool, folder: Path) -> str:
  """A copy of the spec file whose tasks all have caching on or off, as kfp.Client's
  enable_caching does to a spec it sends inline; the platform document is kept."""
  import yaml  # pylint: disable=import-outside-toplevel
  documents = list(yaml.safe_load_all(Path(spec_path).read_text()))
  for task in documents[0]['root']['dag']['tasks'].values():
    task.setdefault('cachingOptions', {})['enableCache'] = enable_caching
  copy = folder / Path(spec_path).name  # the server reads the format from the name
  copy.write_text(yaml.safe_dump_all(documents, sort_keys=True))
  return str(copy)


def resolve_version(kfp_config: KubeflowConfig, pipeline_name: str,
                    id_or_name: str) -> PipelineVersion:
  """The pipeline's version with that id or name, or its newest for `latest`."""
  client = connect(kfp_config)
  pipeline_id = find_pipeline(client, kfp_config, pipeline_name)
  if pipeline_id is None:
    raise KubeflowError(f'no pipeline named {pipeline_name!r} on the server (run `python -m '
                        f'kubeflow upload` first)')
  versions = list(_versions(client, kfp_config, pipeline_id))
  match = [v for v in versions if id_or_name in (v.pipeline_version_id, v.display_name)]
  if not match and id_or_name == LATEST:
    match = versions[:1]
  if not match:
    newest = ', '.join(repr(v.display_name) for v in versions[:3]) or 'none'
    raise KubeflowError(f'pipeline {pipeline_name!r} has no version with id or name '
                        f'{id_or_name!r} (newest: {newest}; `python -m kubeflow upload` adds '
                        f'one)')
  return _version(pipeline_name, match[0])


def latest_run_id(kfp_config: KubeflowConfig, experiment: str) -> str:
  """The experiment's newest run, for `wait` without a run id."""
  runs = list_runs(kfp_config, experiment, limit=1)
  if not runs:
    raise KubeflowError(f'no runs in experiment {experiment!r} to wait for')
  return runs[0].run_id
