"""The one typed configuration of the Kubeflow Pipelines side.

`KubeflowConfig` says where the pipeline runs (image, pipeline root, data and serving
locations, GPU nodes) and which Kubeflow Pipelines API it talks to. Values come from, in
rising precedence: the defaults below, `MNIST_KFP_*` environment variables
(`MNIST_KFP_IMAGE`, `MNIST_KFP_PIPELINE_ROOT`, ...; the host also from `KFP_HOST`), and
command-line flags (`--image`, `--pipeline-root`, ...) -- the same pattern as
pipeline/configs.py, whose `PipelineConfig` still holds everything about the DAG itself
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
  beam_args: str = '--direct_running_mode=multi_processing'  # e.g. --runner=DataflowRunner ...
  # The Trainer's GPU nodes; every other task stays on CPU.
  gpu_count: int = 1                       # 0 keeps the Trainer on CPU
  gpu_resource: str = 'nvidia.com/gpu'     # the extended resource the device plugin offers
  gpu_type: str = ''                       # e.g. nvidia-tesla-t4; '' = any GPU node
  gpu_type_label: str = 'cloud.google.com/gke-accelerator'  # node label naming the type
  node_selector: str = ''                  # extra KEY=VALUE,... for the Trainer's pod
  tolerations: str = 'nvidia.com/gpu:NoSchedule'  # KEY[=VALUE]:EFFECT,... for the Trainer
  cpu_limit: float = 0.0                   # cores per task; 0 = no limit
  memory_limit: float = 0.0                # GB per task (KFP's unit); 0 = no limit
  # The Kubeflow Pipelines API and its usual auth options.
  host: str = ''                           # e.g. http://localhost:8080 (port-forward)
  namespace: str = ''                      # multi-user Kubeflow: the profile namespace
  experiment: str = ''                     # '' = the pipeline name
  service_account: str = ''                # Kubernetes service account of the runs
  token: str = ''                          # bearer token (e.g. `gcloud auth print-access-token`)
  cookies: str = ''                        # e.g. authservice_session=... (Dex login)
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
    if self.timeout <= 0:
      raise ValueError(f'timeout must be > 0, found {self.timeout}')
    if not self.pipeline_root.startswith(PIPELINE_ROOT_SCHEMES):
      raise ValueError(f'pipeline_root: expected object storage starting with one of '
                       f'{", ".join(PIPELINE_ROOT_SCHEMES)}, found {self.pipeline_root!r}')
    # Parse now so that a malformed value fails at load time, not at compile time.
    self.pvc_volumes()
    self.node_selector_labels()
    self.toleration_list()

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
