"""The TF Serving manifests as `kubectl kustomize` builds them, checked offline.

Every object is validated against the Kubernetes OpenAPI schemas that kubernetes-validate
ships (strict: unknown fields fail), for the Kubernetes versions Kubeflow 1.8-1.10 run on;
then the policies the manifests exist for are pinned: probes that survive the wait for the
first push, a ReadWriteMany class per cloud, the profile namespace, and a model config
that serves what the Pusher writes.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from typing import Any, Dict, List

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline.configs import REPO_ROOT

BUILDS = {'gke': 'serving/k8s', 'aks': 'serving/overlays/aks', 'eks': 'serving/overlays/eks'}
RWX_CLASSES = {'gke': 'standard-rwx', 'aks': 'azurefile-csi', 'eks': 'efs-sc'}
# Kubeflow 1.8 ran on Kubernetes 1.25-1.26, 1.9 on 1.29, 1.10 on 1.31-1.32.
KUBERNETES_VERSIONS = ('1.25.0', '1.29.0', '1.32.0')
NAMESPACE = 'kubeflow-user-example-com'


def build(path: str) -> List[Dict[str, Any]]:
  kubectl = shutil.which('kubectl')
  assert kubectl, 'kubectl is part of the machine image; its kustomize builds the manifests'
  result = subprocess.run([kubectl, 'kustomize', str(REPO_ROOT / path)], capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope='module', params=sorted(BUILDS))
def cloud(request) -> str:
  return request.param


@pytest.fixture(scope='module')
def objects(cloud) -> Dict[str, Dict[str, Any]]:
  return {doc['kind']: doc for doc in build(BUILDS[cloud])}


def container(objects) -> Dict[str, Any]:
  (serving,) = objects['Deployment']['spec']['template']['spec']['containers']
  return serving


@pytest.fixture
def offline(monkeypatch) -> None:
  """Any connection attempt fails: the schemas must come from the installed package."""
  def refuse(*_args, **_kwargs):
    raise AssertionError('the validator tried to reach the network')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)


@pytest.mark.usefixtures('offline')
@pytest.mark.parametrize('version', KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(objects, version):
  assert set(objects) == {'ConfigMap', 'Deployment', 'PersistentVolumeClaim', 'Service'}
  for doc in objects.values():
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.usefixtures('offline')
def test_the_validator_rejects_what_kubernetes_would(objects):
  """It works offline and is strict: a misspelt field and a wrong type both fail."""
  deployment = yaml.safe_load(yaml.safe_dump(objects['Deployment']))
  container({'Deployment': deployment})['startupProbes'] = {}
  with pytest.raises(kubernetes_validate.ValidationError):
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
  claim = yaml.safe_load(yaml.safe_dump(objects['PersistentVolumeClaim']))
  claim['spec']['accessModes'] = 'ReadWriteMany'
  with pytest.raises(kubernetes_validate.ValidationError):
    kubernetes_validate.validate(claim, KUBERNETES_VERSIONS[-1], strict=True)


def test_everything_lives_in_the_profile_namespace(objects):
  """Pipeline pods run in the profile namespace and can only mount claims of their own."""
  assert {doc['metadata'].get('namespace') for doc in objects.values()} == {NAMESPACE}


def test_the_claim_is_shared_read_write_on_a_class_that_offers_it(cloud, objects):
  claim = objects['PersistentVolumeClaim']
  assert claim['metadata']['name'] == 'mnist-serving-models'  # docs' --pvc-mounts name
  assert claim['spec']['accessModes'] == ['ReadWriteMany']
  assert claim['spec']['storageClassName'] == RWX_CLASSES[cloud]
  volumes = objects['Deployment']['spec']['template']['spec']['volumes']
  assert {'claimName': 'mnist-serving-models', 'readOnly': True} in [
      v.get('persistentVolumeClaim') for v in volumes]


def test_probes_wait_for_the_first_push_then_check_the_model(objects):
  """TF Serving opens no port before a version loads: liveness must wait for it."""
  serving = container(objects)
  status = {'path': '/v1/models/mnist', 'port': 'rest'}
  startup = serving['startupProbe']
  assert startup['httpGet'] == status
  assert startup['periodSeconds'] * startup['failureThreshold'] >= 24 * 3600
  assert serving['readinessProbe']['httpGet'] == status
  liveness = serving['livenessProbe']
  assert 'initialDelaySeconds' not in liveness  # the startup probe holds it off
  ports = {p['name']: p['containerPort'] for p in serving['ports']}
  assert ports == {'grpc': 8500, 'rest': 8501}
  assert '--rest_api_port=8501' in serving['args'] and '--port=8500' in serving['args']


def test_the_model_config_serves_the_newest_timestamp_version(objects):
  """The Pusher writes Unix-time versions: a `specific` policy naming 1 and 2 would
  never load one, so the deployment ships its own config with the latest policy."""
  serving = container(objects)
  (flag,) = [a for a in serving['args'] if a.startswith('--model_config_file=')]
  path = flag.split('=', 1)[1]
  mounts = {m['name']: m['mountPath'] for m in serving['volumeMounts']}
  volumes = {v['name']: v for v in objects['Deployment']['spec']['template']['spec']['volumes']}
  config_map = objects['ConfigMap']
  assert volumes['config']['configMap']['name'] == config_map['metadata']['name']
  assert path == f'{mounts["config"]}/models.config'
  config = text_format.Parse(config_map['data']['models.config'],
                             model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert model.name == 'mnist'
  assert model.model_version_policy.WhichOneof('policy_choice') == 'latest'
  assert model.model_version_policy.latest.num_versions == 1
  assert model.base_path == f'{mounts["models"]}/mnist'


def test_the_service_routes_to_the_serving_pods(objects):
  service = objects['Service']
  labels = objects['Deployment']['spec']['template']['metadata']['labels']
  assert service['spec']['selector'].items() <= labels.items()
  assert {p['targetPort'] for p in service['spec']['ports']} == {'grpc', 'rest'}
