"""Remote Beam workers of the Kubeflow tasks run the pipeline image, which has the project
and Beam's worker boot (kubeflow/Dockerfile; the workers themselves are proven with a
wheel in tests/pipeline/test_portable_runner_workers.py)."""

from __future__ import annotations

import re
import sys

import apache_beam
import pytest

from kubeflow import config as kfp_configs, runner
from pipeline import configs

DOCKERFILE = (configs.REPO_ROOT / 'kubeflow' / 'Dockerfile').read_text()


IMAGE = 'registry/mnist-tfx:1'
DATAFLOW_IMAGE = [f'--sdk_container_image={IMAGE}']  # Dataflow's, and TFX's check
DOCKER_IMAGE = [f'--sdk_container_image={IMAGE}', f'--environment_config={IMAGE}']


@pytest.mark.parametrize('flags, added', [
    ('--runner=DataflowRunner --project=p --region=r --temp_location=gs://b/tmp',
     DATAFLOW_IMAGE),
    ('--runner=PortableRunner --job_endpoint=flink-jobserver:8099', DOCKER_IMAGE),
    ('--runner=FlinkRunner --flink_master=flink:8081 --environment_type=DOCKER',
     DOCKER_IMAGE),
    ('--runner=SparkRunner --spark_master_url=spark://spark:7077', DOCKER_IMAGE),
    # Worker-pool sidecars (which run the image with --worker_pool) or an image named:
    ('--runner=FlinkRunner --flink_master=flink:8081 --environment_type=EXTERNAL '
     '--environment_config=localhost:50000', DATAFLOW_IMAGE),
    ('--runner=PortableRunner --job_endpoint=j:8099 '
     '--environment_options=docker_container_image=other:1', DATAFLOW_IMAGE),
])
def test_remote_runners_default_to_the_pipeline_image_for_their_workers(flags, added):
  kfp = kfp_configs.KubeflowConfig(beam_args=flags, image=IMAGE)
  args = runner.beam_args(configs.PipelineParams(), kfp)
  assert args == [*flags.split(), *added]


def test_a_dependency_flag_of_the_users_own_wins():
  flags = '--runner=DataflowRunner --project=p --extra_packages=gs://b/mnist.whl'
  kfp = kfp_configs.KubeflowConfig(beam_args=flags, image=IMAGE)
  assert runner.beam_args(configs.PipelineParams(), kfp) == flags.split()


def test_image_is_a_beam_sdk_container_of_the_locked_beam_and_python():
  """Beam's boot must be the SDK's own version for the Python the image runs."""
  python = f'{sys.version_info.major}.{sys.version_info.minor}'
  copy = re.search(r'^COPY --from=apache/beam_python(\S+)_sdk:(\S+) /opt/apache/beam '
                   r'/opt/apache/beam$', DOCKERFILE, re.M)
  assert copy and copy.groups() == (python, apache_beam.__version__)
  assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', DOCKERFILE, re.M)
  # Boot would otherwise run the harness in a new venv that cannot see /opt/venv.
  assert 'RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1' in DOCKERFILE
  assert not re.search(r'^CMD ', DOCKERFILE, re.M)  # would become boot's arguments
