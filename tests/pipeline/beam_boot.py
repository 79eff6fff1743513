"""A small emulation of the Beam Python SDK container's boot program, for the portable
runner test (test_portable_runner_workers.py): the worker pool runs it for each worker
with the flags of the container contract (--id, --*_endpoint), as it runs
/opt/apache/beam/boot in a container.

It follows Beam 2.61's sdks/python/container/boot.go and piputil.go:
1. the provision info from the provision endpoint (the worker id in the gRPC metadata);
2. the job's staged artifacts (the info's dependencies) fetched from the artifact
   endpoint into <semi-persistent dir>/staged, each under its staged name;
3. every package listed in extra_packages.txt installed as boot's first pip round does it
   (`pip install --upgrade --force-reinstall --no-deps`), here into a scratch folder
   that goes on the worker's PYTHONPATH instead of into the container's environment.
   Boot's second round (`pip install PACKAGE`, which fetches the package's requirements
   from PyPI) is left out: the worker's environment has them already, as an image built
   from requirements.lock does; a requirements.txt or setup.py workflow is refused, the
   project ships neither;
4. the SDK harness, `python -m apache_beam.runners.worker.sdk_worker_main`, with the
   environment variables boot.go sets (pipeline options as JSON, endpoints as text
   protos). boot.go waits on it and restarts it on a crash; this execs it.

Only the standard library and Beam are imported: the worker's environment has no project.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import grpc
from apache_beam.portability import common_urns
from apache_beam.portability.api import (beam_artifact_api_pb2, beam_artifact_api_pb2_grpc,
                                         beam_provision_api_pb2,
                                         beam_provision_api_pb2_grpc, beam_runner_api_pb2,
                                         endpoints_pb2)
from google.protobuf import json_format

EXTRA_PACKAGES_FILE = 'extra_packages.txt'   # boot.go's names, kept in sync with stager.py
REFUSED_FILES = ('requirements.txt', 'workflow.tar.gz')
SCRATCH_ENV = 'BEAM_BOOT_SCRATCH'  # where semi-persistent folders go (boot.go: /tmp)


def provision_info(endpoint: str, worker_id: str) -> beam_provision_api_pb2.ProvisionInfo:
  with grpc.insecure_channel(endpoint) as channel:
    stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
    return stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                 metadata=[('worker_id', worker_id)]).info


def materialize(endpoint: str, dependencies, folder: Path) -> List[str]:
  """Resolves and downloads the artifacts; returns their staged names."""
  folder.mkdir(parents=True, exist_ok=True)
  names = []
  with grpc.insecure_channel(endpoint) as channel:
    stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
    resolved = stub.ResolveArtifacts(beam_artifact_api_pb2.ResolveArtifactsRequest(
        artifacts=dependencies)).replacements
    for artifact in resolved:
      if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
        raise SystemExit(f'boot: artifact without a staged name: {artifact}')
      name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
          artifact.role_payload).staged_name
      with open(folder / name, 'wb') as out:
        for chunk in stub.GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(
            artifact=artifact)):
          out.write(chunk.data)
      names.append(name)
  return names


def install_extra_packages(staged: Path, names: List[str], site: Path) -> None:
  refused = [name for name in REFUSED_FILES if name in names]
  if refused:
    raise SystemExit(f'boot: this emulation installs extra packages only, got {refused}')
  if EXTRA_PACKAGES_FILE not in names:
    return
  for package in (staged / EXTRA_PACKAGES_FILE).read_text().split():
    print(f'boot: installing extra package {package}', file=sys.stderr, flush=True)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-cache-dir',
                    '--disable-pip-version-check', '--quiet', '--upgrade',
                    '--force-reinstall', '--no-deps', '--target', str(site),
                    str(staged / package)], check=True, stdout=sys.stderr)


def main() -> None:
  parser = argparse.ArgumentParser()
  for name in ('id', 'logging_endpoint', 'artifact_endpoint', 'provision_endpoint',
               'control_endpoint'):
    parser.add_argument('--' + name, required=True)
  args = parser.parse_args()
  info = provision_info(args.provision_endpoint, args.id)
  semi_persist = Path(tempfile.mkdtemp(prefix='worker-', dir=os.environ.get(SCRATCH_ENV)))
  staged, site = semi_persist / 'staged', semi_persist / 'site'
  names = materialize(info.artifact_endpoint.url or args.artifact_endpoint,
                      info.dependencies, staged)
  install_extra_packages(staged, names, site)

  def descriptor(url: str) -> str:
    return str(endpoints_pb2.ApiServiceDescriptor(url=url))

  env = dict(os.environ,
             PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
             SEMI_PERSISTENT_DIRECTORY=str(semi_persist),
             LOGGING_API_SERVICE_DESCRIPTOR=descriptor(
                 info.logging_endpoint.url or args.logging_endpoint),
             CONTROL_API_SERVICE_DESCRIPTOR=descriptor(
                 info.control_endpoint.url or args.control_endpoint),
             RUNNER_CAPABILITIES=' '.join(info.runner_capabilities),
             WORKER_ID=args.id,
             PYTHONPATH=str(site))
  os.execve(sys.executable,
            [sys.executable, '-m', 'apache_beam.runners.worker.sdk_worker_main'], env)


if __name__ == '__main__':
  main()
