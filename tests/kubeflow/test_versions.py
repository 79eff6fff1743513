"""upload, and runs of pipeline versions, against the recording loopback KFP API.

A run or recurring run references an uploaded pipeline version, so the KFP UI lists the
pipeline's history; the fake serves the upload routes as KFP 2.0.5 / 2.2.0's API server
does (tests/kubeflow/fake_kfp.py) and refuses runs of versions it does not have.
"""

from __future__ import annotations

import datetime
import re
import subprocess

import pytest

from kubeflow import client
from tests.kubeflow.conftest import PIPELINE_ROOT
from tests.kubeflow.test_client import cli, run_version

VERSION_NAME = re.compile(r'^[0-9a-f]{7,}(-dirty)?-\d{8}-\d{6}$')


def uploads(fake_kfp):
  return fake_kfp.calls('POST', '/pipelines/upload_version')


def test_upload_creates_the_pipeline_once_then_adds_a_version_per_upload(
    capsys, fake_kfp, compiled):
  code, out, err = cli(capsys, fake_kfp, compiled, 'upload', '--namespace', 'alice')
  assert code == 0, err
  assert re.search(r"^Uploaded version '[^']+' \(version-1\) of pipeline 'mnist' "
                   r"\(pipeline-1\); created the pipeline$", out, re.MULTILINE), out
  (created,) = fake_kfp.calls('POST', '/pipelines')
  assert created.body == {'display_name': 'mnist', 'namespace': 'alice'}
  first = uploads(fake_kfp)[0]
  assert first.query['pipelineid'] == ['pipeline-1']
  assert VERSION_NAME.match(first.query['name'][0]), first.query['name']
  assert first.body['uploadfile'][0] == compiled.path.name  # the server reads .yaml by name
  (version,) = fake_kfp.versions
  assert version.pipeline_spec == {'pipeline_spec': compiled.spec,
                                   'platform_spec': compiled.platform}

  code, out, err = cli(capsys, fake_kfp, compiled, 'upload', '--namespace', 'alice')
  assert code == 0, err
  assert 'created the pipeline' not in out
  assert len(fake_kfp.calls('POST', '/pipelines')) == 1
  names = [v.display_name for v in fake_kfp.versions]
  assert len(set(names)) == 2  # within one second the second gets "-2"
  assert fake_kfp.calls('GET', '/pipelines')[-1].query['namespace'] == ['alice']


def test_git_revision_names_the_commit_and_a_dirty_tree(tmp_path):
  def git(*args):
    subprocess.run(['git', *args], cwd=tmp_path, check=True, capture_output=True)

  assert client.git_revision(tmp_path) == ''  # not a checkout
  git('init', '-q')
  (tmp_path / 'a.txt').write_text('one')
  git('add', 'a.txt')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'one')
  head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=tmp_path, check=True,
                        capture_output=True, text=True).stdout.strip()
  (tmp_path / 'untracked.txt').write_text('not counted, as git describe --dirty')
  assert client.git_revision(tmp_path) == head
  (tmp_path / 'a.txt').write_text('two')
  assert client.git_revision(tmp_path) == head + '-dirty'
  now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
  assert client.version_name(head + '-dirty', now) == f'{head}-dirty-20260102-030405'
  assert client.version_name('', now) == 'no-git-20260102-030405'


def test_upload_without_git_names_the_version_by_time_and_says_why(
    capsys, fake_kfp, compiled, monkeypatch, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))  # no git executable
  code, out, err = cli(capsys, fake_kfp, compiled, 'upload')
  assert code == 0, err
  assert re.fullmatch(r'no-git-\d{8}-\d{6}', fake_kfp.versions[0].display_name)
  assert 'no git commit found: not a git checkout, or git is not installed' in out


def test_an_explicit_version_name_that_is_taken_is_refused(capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'upload', '--version-name', 'v1')[0] == 0
  code, _, err = cli(capsys, fake_kfp, compiled, 'upload', '--version-name', 'v1')
  assert code == 1
  assert "pipeline 'mnist' already has a version named 'v1'" in err
  assert len(uploads(fake_kfp)) == 1


@pytest.mark.parametrize('wanted, expected', [
    ('v1', 'version-1'), ('version-1', 'version-1'), ('latest', 'version-2')])
def test_submit_and_schedule_run_an_uploaded_version_by_name_id_or_latest(
    capsys, fake_kfp, compiled, wanted, expected):
  for name in ('v1', 'v2'):
    assert cli(capsys, fake_kfp, compiled, 'upload', '--version-name', name)[0] == 0
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit', '--pipeline-version', wanted)
  assert code == 0, err
  code, _, err = cli(capsys, fake_kfp, compiled, 'schedule', '--cron', '0 3 * * *',
                     '--pipeline-version', wanted)
  assert code == 0, err
  assert len(uploads(fake_kfp)) == 2  # nothing uploaded by submit or schedule
  for request in fake_kfp.calls('POST', '/runs') + fake_kfp.calls('POST', '/recurringruns'):
    assert run_version(fake_kfp, request).pipeline_version_id == expected
    assert 'pipeline_spec' not in request.body
    assert request.body['runtime_config']['pipeline_root'] == PIPELINE_ROOT


def test_an_unknown_version_is_refused_before_any_run(capsys, fake_kfp, compiled):
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit', '--pipeline-version', 'v1')
  assert code == 1 and "no pipeline named 'mnist' on the server" in err
  for name in ('v1', 'v2'):
    assert cli(capsys, fake_kfp, compiled, 'upload', '--version-name', name)[0] == 0
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit', '--pipeline-version', 'v3')
  assert code == 1
  assert "pipeline 'mnist' has no version with id or name 'v3' (newest: 'v2', 'v1'" in err
  assert not fake_kfp.calls('POST', '/runs')


def test_no_cache_cannot_change_an_uploaded_version(capsys, fake_kfp, compiled):
  assert cli(capsys, fake_kfp, compiled, 'upload')[0] == 0
  code, _, err = cli(capsys, fake_kfp, compiled, 'submit', '--pipeline-version', 'latest',
                     '--no-cache')
  assert code == 1 and 'caching is part of an uploaded version' in err
  assert not fake_kfp.calls('POST', '/runs')


def test_wait_without_a_run_id_follows_the_newest_run(capsys, fake_kfp, compiled):
  for _ in range(2):
    assert cli(capsys, fake_kfp, compiled, 'submit')[0] == 0
  fake_kfp.progress['run-2'] = ['SUCCEEDED']
  code, out, err = cli(capsys, fake_kfp, compiled, 'wait', '--poll', '0.01')
  assert code == 0, err
  assert out.startswith('run-2 ')


def test_the_fake_serves_the_upload_routes_and_refuses_unknown_versions(fake_kfp, compiled):
  """Through kfp.Client's own calls: upload (pipeline and a first version named after it),
  upload_version, and runs that reference a missing or another pipeline's version."""
  import kfp  # pylint: disable=import-outside-toplevel
  import kfp_server_api  # pylint: disable=import-outside-toplevel
  kfp_client = kfp.Client(host=fake_kfp.host)
  pipeline = kfp_client.upload_pipeline(str(compiled.path), 'other')
  assert (pipeline.pipeline_id, pipeline.display_name) == ('pipeline-1', 'other')
  version = kfp_client.upload_pipeline_version(str(compiled.path), 'v2',
                                               pipeline_id=pipeline.pipeline_id)
  assert (version.pipeline_version_id, version.display_name) == ('version-2', 'v2')
  listed = kfp_client.list_pipeline_versions(pipeline.pipeline_id)
  assert [v.display_name for v in listed.pipeline_versions] == ['other', 'v2']
  with pytest.raises(kfp_server_api.ApiException) as conflict:
    kfp_client.upload_pipeline(str(compiled.path), 'other')
  assert conflict.value.status == 409

  def run(pipeline_id, version_id):
    return kfp_client.run_pipeline(experiment_id='exp-1', job_name='run',
                                   pipeline_id=pipeline_id, version_id=version_id,
                                   pipeline_root=PIPELINE_ROOT)

  assert run('pipeline-1', 'version-2').pipeline_version_reference
  with pytest.raises(kfp_server_api.ApiException) as missing:
    run('pipeline-1', 'version-9')
  assert missing.value.status == 500 and 'PipelineVersion version-9 not found' in (
      missing.value.body)
  with pytest.raises(kfp_server_api.ApiException) as foreign:
    run('pipeline-7', 'version-2')
  assert foreign.value.status == 400 and 'belongs to pipeline pipeline-1' in foreign.value.body


def test_an_upload_the_server_refuses_is_one_clear_line(capsys, fake_kfp, compiled, tmp_path):
  """The upload routes answer errors as {error_message, ...}, not the gateway's form."""
  text_file = tmp_path / 'mnist.txt'
  text_file.write_text(compiled.path.read_text())
  code, _, err = cli(capsys, fake_kfp, compiled, 'upload', '--spec-path', str(text_file))
  assert code == 1
  assert err.startswith(f'error: Kubeflow Pipelines at {fake_kfp.host} answered HTTP 400 ')
  assert err.rstrip().endswith('Unexpected pipeline file format. Support .zip, .tar.gz, '
                               '.json or YAML')
