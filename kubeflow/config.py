"""The one typed configuration of the Kubeflow Pipelines side.

`KubeflowConfig` says where the pipeline runs (image, pipeline root, data and serving
locations, GPU nodes) and which Kubeflow Pipelines API it talks to. Values come from, in
rising precedence: the defaults below, `MNIST_KFP_*` environment variables
(`MNIST_KFP_IMAGE`, `MNIST_KFP_PIPELINE_ROOT`, ...; the host also from `KFP_HOST`), and
command-line flags (`--image`, `--pipeline-root`, ...) -- the same pattern as
pipeline/configs.py, whose `PipelineParams` holds everything about the DAG itself
(pipeline name, split sizes, epochs, ...).

Paths here are strings, not `Path`s: most of them name object storage (`gs://`,
`s3://`, `minio://`) or a path inside the pod, never a file on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pipeline import configs

ENV_PREFIX = 'MNIST_KFP_'
# Other environment names accepted for a field, after its MNIST_KFP_* name.
ENV_ALIASES = {'host': ('KFP_HOST',)}
SPEC_DIR = configs.REPO_ROOT / 'outputs' / 'kubeflow'

# The only URI schemes whose files a pod can read and write without extra plugins: the
# image's TensorFlow has the GCS filesystem built in but no S3 one.
GFILE_SCHEMES = ('gs://',)
# Schemes the Kubeflow Pipelines launcher moves artifacts to and from (pipeline root).
PIPELINE_ROOT_SCHEMES = ('gs://', 's3://', 'minio://')

# The Kubernetes executor config fields (kfp-kubernetes' KubernetesExecutorConfig, JSON
# names) this project emits that each KFP backend generation knows. Backends 2.0-2.4 parse
# that config strictly (jsonpb without AllowUnknownFields, backend/src/v2/cmd/driver), so
# one field their proto lacks fails the task at launch: 2.0.x (Kubeflow 1.8) has only the
# first four; tolerations and imagePullSecret came with 2.1. '2.2' stands for 2.2 and later
# (Kubeflow 1.9, 1.10). See docs/kubeflow.md.
# activeDeadlineSeconds (a task's timeout) came with 2.1 too: the driver sets it as the
# pod's activeDeadlineSeconds. '2.4.1' stands for 2.4.1 and later (Kubeflow 1.10): the
# same Kubernetes fields, and the first backend whose Argo compiler turns a task's
# retryPolicy into a retryStrategy (argocompiler/container.go); older ones accept the
# field and ignore it.
PLATFORM_FIELDS = {
    '2.0': ('pvcMount', 'nodeSelector', 'secretAsEnv', 'secretAsVolume'),
    '2.2': ('pvcMount', 'nodeSelector', 'secretAsEnv', 'secretAsVolume', 'tolerations',
            'imagePullSecret', 'activeDeadlineSeconds'),
    '2.4.1': ('pvcMount', 'nodeSelector', 'secretAsEnv', 'secretAsVolume', 'tolerations',
              'imagePullSecret', 'activeDeadlineSeconds'),
}
# The generations that retry a task per the pipeline spec's PipelineTaskSpec.retryPolicy.
RETRY_GENERATIONS = ('2.4.1',)


@dataclasses.dataclass
class KubeflowConfig:
  """Where the compiled pipeline runs and how to reach the Kubeflow Pipelines API."""
  # What runs, and where its files live.
  image: str = 'mnist-tfx:latest'          # `make image` builds it; push it to a registry
  gpu_image: str = ''                      # the Trainer's image (CUDA variant); '' = image
  pipeline_root: str = 'minio://mlpipeline/v2/artifacts'  # KFP's default MinIO bucket
  data_uri: str = ''                       # MNIST IDX folder: gs://... or a path on a PVC
  serving_uri: str = ''                    # TF Serving root: gs://... or a path on a PVC
  pvc_mounts: str = ''                     # NAME:/mount/path,... mounted into every task
  spec_path: str = ''                      # '' = outputs/kubeflow/<pipeline_name>.yaml
  beam_args: str = ''                      # e.g. --runner=DataflowRunner ...; see runner.beam_args
  # The Trainer's GPU nodes; every other task stays on CPU.
  gpu_count: int = 1                       # 0 keeps the Trainer on CPU
  gpu_resource: str = 'nvidia.com/gpu'     # the extended resource the device plugin offers
  gpu_type: str = ''                       # e.g. nvidia-tesla-t4; '' = any GPU node
  gpu_type_label: str = 'cloud.google.com/gke-accelerator'  # node label naming the type
  node_selector: str = ''                  # extra KEY=VALUE,... for the Trainer's pod
  tolerations: str = 'nvidia.com/gpu:NoSchedule'  # KEY[=VALUE]:EFFECT,... for the Trainer
  cpu_limit: float = 0.0                   # cores per task; 0 = no limit
  memory_limit: float = 0.0                # GB per task (KFP's unit); 0 = no limit
  # Requested on every task: a namespace with a ResourceQuota admits no pod without them.
  cpu_request: float = 0.5                 # cores per task (at most cpu_limit)
  memory_request: float = 2.0              # GB per task (at most memory_limit)
  # The backend generation, which decides the Kubernetes settings the spec may carry.
  kfp_backend: str = '2.2'                 # 2.0 (Kubeflow 1.8), 2.2 (2.2+: Kubeflow 1.9+) or
                                           # 2.4.1 (2.4.1+: Kubeflow 1.10; task retries)
  # When a task fails or hangs: retries (backend 2.4.1+) and timeouts (2.2+), per task.
  task_retries: int = 0                    # retries of a failed task; 0 = none
  task_retry_backoff: int = 60             # seconds before the first retry, doubling after
  task_timeout: int = 0                    # seconds a task's pod may run; 0 = no limit
  trainer_timeout: int = 0                 # the Trainer's own limit; 0 = task_timeout
  # Credentials, in every task: storage keys from Secrets, and registry pull secrets.
  secret_env: str = ''                     # SECRET:KEY=ENV_VAR,... Secret keys as env vars
  secret_volumes: str = ''                 # SECRET:/mount/path,... Secrets as files
  image_pull_secrets: str = ''             # SECRET,... for a private registry (backend 2.2+)
  # The Kubeflow Pipelines API and its usual auth options.
  host: str = ''                           # e.g. http://localhost:8080 (port-forward)
  namespace: str = ''                      # multi-user Kubeflow: the profile namespace
  experiment: str = ''                     # '' = the pipeline name
  service_account: str = ''                # Kubernetes service account of the runs
  token: str = ''                          # bearer token (e.g. `gcloud auth print-access-token`)
  cookies: str = ''                        # oauth2_proxy_kubeflow=... (Kubeflow 1.9+) or
                                           # authservice_session=... (1.8)
  client_id: str = ''                      # IAP OAuth client id
  other_client_id: str = ''
  other_client_secret: str = ''
  ssl_ca_cert: str = ''
  verify_ssl: bool = True
  timeout: float = 30.0                    # seconds per API request

  def __post_init__(self) -> None:
    for name in ('gpu_count',):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, found {getattr(self, name)}')
    if self.cpu_limit < 0 or self.memory_limit < 0:
      raise ValueError(f'cpu_limit and memory_limit must be >= 0, found '
                       f'{self.cpu_limit}, {self.memory_limit}')
    if self.cpu_request <= 0 or self.memory_request <= 0:
      raise ValueError(f'cpu_request and memory_request must be > 0, found '
                       f'{self.cpu_request}, {self.memory_request}')
    if self.timeout <= 0:
      raise ValueError(f'timeout must be > 0, found {self.timeout}')
    if not self.pipeline_root.startswith(PIPELINE_ROOT_SCHEMES):
      raise ValueError(f'pipeline_root: expected object storage starting with one of '
                       f'{", ".join(PIPELINE_ROOT_SCHEMES)}, found {self.pipeline_root!r}')
    if self.kfp_backend not in PLATFORM_FIELDS:
      raise ValueError(f'kfp_backend: expected one of {", ".join(PLATFORM_FIELDS)}, found '
                       f'{self.kfp_backend!r}')
    # Parse now so that a malformed value fails at load time, not at compile time.
    self.pvc_volumes()
    self.node_selector_labels()
    self.toleration_list()
    self.secret_env_vars()
    self.pull_secrets()
    self.trainer_tolerations()
    self.check_task_policies()
    # The driver names each pod volume after its claim or Secret (extendPodSpecPatch): a
    # name used twice makes a pod Kubernetes rejects.
    names = [name for name, _ in self.pvc_volumes() + self.secret_mounts()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
      raise ValueError(f'pvc_mounts and secret_volumes: each claim or Secret may be mounted '
                       f'once (the pod volume takes its name), found {", ".join(repeated)} '
                       f'more than once')

  def supports(self, field: str) -> bool:
    """Whether the backend's Kubernetes executor config has this field (PLATFORM_FIELDS)."""
    return field in PLATFORM_FIELDS[self.kfp_backend]

  @property
  def trainer_image(self) -> str:
    return self.gpu_image or self.image

  def spec_file(self, pipeline_name: str) -> str:
    return self.spec_path or str(SPEC_DIR / f'{pipeline_name}.yaml')

  def experiment_name(self, pipeline_name: str) -> str:
    return self.experiment or pipeline_name

  def pvc_volumes(self) -> List[Tuple[str, str]]:
    """[(pvc_name, mount_path)] from `NAME:/path,NAME2:/path2`."""
    result = []
    for item in _items(self.pvc_mounts):
      name, sep, path = item.partition(':')
      if not sep or not name or not path.startswith('/'):
        raise ValueError(f'pvc_mounts: expected NAME:/absolute/path, found {item!r}')
      result.append((name, path.rstrip('/') or '/'))
    return result

  def node_selector_labels(self) -> Dict[str, str]:
    """The Trainer's node selector: the GPU type label plus `KEY=VALUE,...`."""
    labels = {self.gpu_type_label: self.gpu_type} if self.gpu_type else {}
    for item in _items(self.node_selector):
      key, sep, value = item.partition('=')
      if not sep or not key:
        raise ValueError(f'node_selector: expected KEY=VALUE, found {item!r}')
      labels[key] = value
    return labels

  def toleration_list(self) -> List[Dict[str, str]]:
    """Kubernetes tolerations from taint-like `KEY[=VALUE]:EFFECT` items."""
    effects = ('NoSchedule', 'PreferNoSchedule', 'NoExecute')
    result = []
    for item in _items(self.tolerations):
      key_value, sep, effect = item.rpartition(':')
      if not sep:
        key_value, effect = item, ''
      key, has_value, value = key_value.partition('=')
      if not key or (effect and effect not in effects):
        raise ValueError(f'tolerations: expected KEY[=VALUE][:EFFECT] with EFFECT one of '
                         f'{effects}, found {item!r}')
      toleration = {'key': key, 'operator': 'Equal' if has_value else 'Exists'}
      if has_value:
        toleration['value'] = value
      if effect:
        toleration['effect'] = effect
      result.append(toleration)
    return result


  def trainer_tolerations(self) -> List[Dict[str, str]]:
    """The Trainer's tolerations the backend can carry. 2.0.x has no tolerations field;
    there the one toleration Kubernetes' ExtendedResourceToleration admission plugin adds
    by itself to pods requesting the GPU resource (KEY = that resource, Exists, NoSchedule;
    GKE enables the plugin) is left to it, and any other is refused."""
    tolerations = self.toleration_list() if self.gpu_count else []
    if self.supports('tolerations'):
      return tolerations
    automatic = {'key': self.gpu_resource, 'operator': 'Exists', 'effect': 'NoSchedule'}
    extra = [t for t in tolerations if t != automatic]
    if extra:
      raise ValueError(
          f'tolerations: KFP backend {self.kfp_backend} cannot set tolerations (its '
          f'Kubernetes executor config has no such field and its driver rejects unknown '
          f'ones); found {extra}. Use --kfp-backend 2.2 on KFP 2.2 or later, or drop them '
          f'(only {self.gpu_resource}:NoSchedule is added by the cluster itself)')
    return []

  def check_task_policies(self) -> None:
    """Retries and timeouts only where the backend applies them: set elsewhere they would
    be ignored without a word (retries) or fail every task at launch (timeouts on 2.0)."""
    for name in ('task_retries', 'task_retry_backoff', 'task_timeout', 'trainer_timeout'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, found {getattr(self, name)}')
    if self.task_retries and self.kfp_backend not in RETRY_GENERATIONS:
      raise ValueError(
          f'task_retries: KFP backend {self.kfp_backend} does not retry tasks (its Argo '
          f'compiler ignores the spec\'s retryPolicy; retries came with 2.4.1), found '
          f'{self.task_retries}. Use --kfp-backend 2.4.1 on KFP 2.4.1 or later (Kubeflow '
          f'1.10), or --task-retries 0')
    if (self.task_timeout or self.trainer_timeout) and not self.supports(
        'activeDeadlineSeconds'):
      raise ValueError(
          f'task_timeout and trainer_timeout: KFP backend {self.kfp_backend} cannot set them '
          f'(its Kubernetes executor config has no activeDeadlineSeconds field and its driver '
          f'rejects unknown ones); found {self.task_timeout}, {self.trainer_timeout}. Use '
          f'--kfp-backend 2.2 on KFP 2.2 or later, or leave them 0')

  def timeout_seconds(self, trainer: bool) -> int:
    """A task's pod deadline in seconds (0 = none): the Trainer's own, else task_timeout."""
    return (self.trainer_timeout or self.task_timeout) if trainer else self.task_timeout

  def retry_policy(self) -> Dict[str, Any]:
    """PipelineTaskSpec.retryPolicy (JSON names), {} without retries. No
    backoffMaxDuration: Argo reads it as a deadline for the whole retried task."""
    if not self.task_retries:
      return {}
    return {'maxRetryCount': self.task_retries,
            'backoffDuration': f'{self.task_retry_backoff}s', 'backoffFactor': 2.0}

  def secret_env_vars(self) -> Dict[str, List[Tuple[str, str]]]:
    """{secret: [(key, env_var)]} from `SECRET:KEY=ENV_VAR,...`, in the order given."""
    result: Dict[str, List[Tuple[str, str]]] = {}
    for item in _items(self.secret_env):
      secret, sep, mapping = item.partition(':')
      key, has_env, env_var = mapping.partition('=')
      if not (sep and secret and key and has_env and env_var):
        raise ValueError(f'secret_env: expected SECRET:KEY=ENV_VAR, found {item!r}')
      result.setdefault(secret, []).append((key, env_var))
    return result

  def secret_mounts(self) -> List[Tuple[str, str]]:
    """[(secret, mount_path)] from `SECRET:/path,...`."""
    result = []
    for item in _items(self.secret_volumes):
      secret, sep, path = item.partition(':')
      if not sep or not secret or not path.startswith('/'):
        raise ValueError(f'secret_volumes: expected SECRET:/absolute/path, found {item!r}')
      result.append((secret, path.rstrip('/') or '/'))
    return result

  def pull_secrets(self) -> List[str]:
    """Image pull secrets; refused on a backend whose executor config cannot carry them."""
    secrets = _items(self.image_pull_secrets)
    if secrets and not self.supports('imagePullSecret'):
      raise ValueError(
          f'image_pull_secrets: KFP backend {self.kfp_backend} cannot set them (its '
          f'Kubernetes executor config has no imagePullSecret field and its driver rejects '
          f'unknown ones). Add them to the runs\' service account instead (default-editor '
          f'in a Kubeflow profile namespace, pipeline-runner on standalone KFP: kubectl '
          f'patch serviceaccount ... -p \'{{"imagePullSecrets": [{{"name": '
          f'"{secrets[0]}"}}]}}\'), or use --kfp-backend 2.2 on KFP 2.2 or later')
    return secrets


def _items(text: str) -> List[str]:
  return [item.strip() for item in text.split(',') if item.strip()]


# ---------------------------------------------------------------------------
# Overrides from the environment and the command line, as in pipeline/configs.py: every
# field is a flag `--field-name` and an environment variable `MNIST_KFP_FIELD_NAME`.

def _env_names(field: dataclasses.Field) -> List[str]:
  return [ENV_PREFIX + field.name.upper(), *ENV_ALIASES.get(field.name, ())]


def _fields() -> configs.Fields:
  return [('KubeflowConfig', f) for f in dataclasses.fields(KubeflowConfig)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group('Kubeflow (KubeflowConfig)')
  configs.add_field_arguments(group, _fields(), _env_names, dest_prefix='kfp_')


def load(args: Optional[argparse.Namespace] = None,
         environ: Optional[Mapping[str, str]] = None,
         **overrides: Any) -> KubeflowConfig:
  """Builds the config: defaults < environment < CLI flags < keyword overrides."""
  environ = os.environ if environ is None else environ
  values = configs.read_field_values(_fields(), args, environ, _env_names, dest_prefix='kfp_')
  values.update(overrides)
  return KubeflowConfig(**values)
