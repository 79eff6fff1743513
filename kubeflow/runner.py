"""Compiles the local runner's DAG for Kubeflow Pipelines v2 (pipeline spec schema 2.1).

The DAG is `pipeline.create_pipeline`, the same function the local runner calls, given
object-storage paths. TFX's `KubeflowV2DagRunner` turns it into a pipeline spec; this
module then adapts it to the open-source Kubeflow Pipelines backend:

* every container runs `kubeflow.entrypoint` (TFX's own entrypoint fails there,
  tensorflow/tfx#7768; see that module);
* the Trainer requests GPUs (and must then run the CUDA image); its pod gets the GPU
  pool's node selector and tolerations, and every pod the PVC mounts, Secrets and image
  pull secrets, in a second YAML document (the Kubernetes platform spec that `kfp.Client`
  uploads with the pipeline), holding only the fields the configured backend generation
  parses (config.PLATFORM_FIELDS);
* the ExampleGen task is never cached: the file fingerprinting that lets TFX cache it
  (a pre-cache-check hook) runs on Vertex only, so a cached ExampleGen would miss new
  data (spans) in scheduled runs; nor is the Evaluator, whose baseline is the model
  served at the time it runs (components/served_baseline.py; its driver, which puts the
  served version into the cache key locally, does not run on KFP);
* epochs, learning rate, accuracy threshold and the data location are pipeline
  parameters (TFX RuntimeParameters, pipeline.RUNTIME_PARAMETERS) whose defaults are the
  config's values, so a run or schedule sets them without recompiling;
* the pipeline root is written into the spec (`defaultPipelineRoot`) for readers of the
  file; no backend reads it from there (the driver takes the run's runtime config, then
  the namespace's `kfp-launcher` ConfigMap), so kubeflow/client.py sends it with each run.
"""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from kubeflow.config import GFILE_SCHEMES, KubeflowConfig
from pipeline import beam_deps
from pipeline import component_ids as ids
from pipeline.configs import CURATED_SCHEMA, NO_EXTRA_PACKAGES, Locations, PipelineParams

ENTRYPOINT_COMMAND = ('python', '-m', 'kubeflow.entrypoint')
NEVER_CACHED = (ids.EXAMPLE_GEN, ids.EVALUATOR)


class CompileError(ValueError):
  """The configuration cannot make a pipeline that runs on Kubeflow."""


def executor_label(component_id: str) -> str:
  """The deployment-spec executor TFX's v2 compiler names after a component."""
  return f'{component_id}_executor'


def model_serving_uri(params: PipelineParams, kfp: KubeflowConfig) -> str:
  """TF Serving's model base path: the Pusher writes `<this>/<version>/`, as locally."""
  return posixpath.join(kfp.serving_uri.rstrip('/'), params.model_name)


def locations(params: PipelineParams, kfp: KubeflowConfig) -> Locations:
  """Where the pods read and write, as given (URIs or PVC paths); KFP keeps ML Metadata."""
  return Locations(data=kfp.data_uri, pipeline_root=kfp.pipeline_root,
                   serving=model_serving_uri(params, kfp), schema=str(CURATED_SCHEMA))


def beam_args(params: PipelineParams, kfp: KubeflowConfig) -> List[str]:
  """The Beam flags every task gets. DirectRunner workers, unless the flags name them:
  `beam_workers` (1 by default, as locally); with `--beam-workers 0`, the task's CPU limit,
  else 0, which Beam reads as one per core of the node the task runs on
  (PipelineParams.beam_pipeline_args would count the compiling machine's). One worker runs
  in-process, more in worker processes, unless the flags set the mode. Other runners
  (Dataflow; Flink or Spark through the PortableRunner) get the flags as given, plus,
  unless a dependency flag is set (beam_deps.DEPENDENCY_OPTIONS), the pipeline image as
  their workers' container (beam_deps.worker_image_flags): it has the project, TFX and
  Beam's worker boot (kubeflow/Dockerfile), where TFX alone would ship only itself."""
  from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel
  args = shlex.split(kfp.beam_args)
  options = pipeline_options.PipelineOptions(args).get_all_options()
  if options['runner'] in (None, 'DirectRunner'):
    workers = options['direct_num_workers']
    if not any(arg.startswith('--direct_num_workers') for arg in args):
      workers = params.beam_workers or (max(1, int(kfp.cpu_limit)) if kfp.cpu_limit else 0)
      args.append(f'--direct_num_workers={workers}')
    if not any(arg.startswith('--direct_running_mode') for arg in args):
      args.append('--direct_running_mode=' + ('in_memory' if workers == 1
                                              else 'multi_processing'))
    if not beam_deps.ships_dependencies(args):
      args.append(NO_EXTRA_PACKAGES)  # the task's image has everything installed
  elif beam_deps.is_remote(args) and not beam_deps.ships_dependencies(args):
    args.extend(beam_deps.worker_image_flags(args, kfp.image))
  return args


def check_locations(kfp: KubeflowConfig) -> None:
  """Data and serving paths must be readable in a pod: gs:// or a mounted PVC."""
  mounts = [path for _, path in kfp.pvc_volumes()]
  for name, value in (('data_uri', kfp.data_uri), ('serving_uri', kfp.serving_uri)):
    flag = '--' + name.replace('_', '-')
    if not value:
      raise CompileError(f'{name} is not set: pass {flag} (or MNIST_KFP_{name.upper()}) '
                         f'with a gs:// URI or a path on a PVC mounted with --pvc-mounts')
    if value.startswith(GFILE_SCHEMES):
      continue
    if '://' in value:
      raise CompileError(f'{name}: {value!r} cannot be read or written in the pods (their '
                         f'TensorFlow reads {", ".join(GFILE_SCHEMES)} and local paths '
                         f'only): use gs:// or a PVC path (--pvc-mounts NAME:/mnt)')
    if not value.startswith('/') or not any(
        value == m or value.startswith(m.rstrip('/') + '/') for m in mounts):
      raise CompileError(f'{name}: {value!r} is a pod path but no PVC is mounted there '
                         f'(mounts: {", ".join(mounts) or "none"}); add --pvc-mounts '
                         f'NAME:/mount/path or use a gs:// URI')


def check_trainer_image(kfp: KubeflowConfig) -> None:
  """GPUs are only used by the CUDA image: on the CPU one TensorFlow finds no CUDA
  libraries and trains on the CPU without an error, holding the GPU node idle."""
  if kfp.gpu_count and kfp.trainer_image == kfp.image:
    raise CompileError(
        f'gpu_count is {kfp.gpu_count} but gpu_image is not set (the Trainer would run '
        f'{kfp.image!r}, which has no CUDA libraries, and train on the CPU): build the GPU '
        f'variant (make image GPU=1) and pass --gpu-image, or --gpu-count 0')


def build(params: PipelineParams, kfp: KubeflowConfig):
  """The local DAG with the pods' locations, adapted for the open-source backend."""
  from pipeline import pipeline  # pylint: disable=import-outside-toplevel
  check_locations(kfp)
  where = locations(params, kfp)
  dag = pipeline.create_pipeline(params, where, beam_args(params, kfp),
                                 run_values=pipeline.runtime_parameters(params, where))
  attach_resources(dag, kfp)
  return dag


def resource_spec(kfp: KubeflowConfig, gpus: int = 0):
  """A KFP container ResourceSpec: requests and limits for every task, GPUs for the
  Trainer. Requests always: a namespace with a ResourceQuota rejects pods without them."""
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=import-outside-toplevel
  spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
      cpu_limit=kfp.cpu_limit, memory_limit=kfp.memory_limit,
      cpu_request=min(kfp.cpu_request, kfp.cpu_limit or kfp.cpu_request),
      memory_request=min(kfp.memory_request, kfp.memory_limit or kfp.memory_request))
  if gpus:
    spec.accelerator.type = kfp.gpu_resource
    spec.accelerator.count = gpus
  return spec


def attach_resources(dag, kfp: KubeflowConfig) -> None:
  """GPUs for the Trainer (`with_platform_config`), CPU/memory for all tasks."""
  for component in dag.components:
    gpus = kfp.gpu_count if component.id == ids.TRAINER else 0
    if hasattr(component, 'with_platform_config'):
      component.with_platform_config(resource_spec(kfp, gpus))


def kubernetes_settings(kfp: KubeflowConfig, trainer: bool) -> Dict[str, Any]:
  """One executor's Kubernetes executor config (kfp-kubernetes' JSON form); the config
  has already refused what its backend generation cannot parse (KubeflowConfig.supports)."""
  settings: Dict[str, Any] = {}
  if kfp.pvc_volumes():
    settings['pvcMount'] = [{'constant': name, 'mountPath': path}
                            for name, path in kfp.pvc_volumes()]
  if kfp.secret_env_vars():
    settings['secretAsEnv'] = [
        {'secretName': secret,
         'keyToEnv': [{'secretKey': key, 'envVar': env} for key, env in pairs]}
        for secret, pairs in kfp.secret_env_vars().items()]
  if kfp.secret_mounts():
    settings['secretAsVolume'] = [{'secretName': secret, 'mountPath': path}
                                  for secret, path in kfp.secret_mounts()]
  if kfp.pull_secrets():
    settings['imagePullSecret'] = [{'secretName': name} for name in kfp.pull_secrets()]
  if kfp.timeout_seconds(trainer):  # int64: a string in proto JSON, as kfp-kubernetes writes
    settings['activeDeadlineSeconds'] = str(kfp.timeout_seconds(trainer))
  if trainer and kfp.gpu_count:
    if kfp.node_selector_labels():
      settings['nodeSelector'] = {'labels': kfp.node_selector_labels()}
    if kfp.trainer_tolerations():
      settings['tolerations'] = kfp.trainer_tolerations()
  return settings


def kubernetes_platform_spec(kfp: KubeflowConfig, executors: List[str]) -> Dict[str, Any]:
  """The second YAML document: per-executor Kubernetes settings (kfp-kubernetes form)."""
  result: Dict[str, Any] = {}
  for executor in executors:
    settings = kubernetes_settings(kfp, executor == executor_label(ids.TRAINER))
    if settings:
      result[executor] = settings
  if not result:
    return {}
  return {'platforms': {'kubernetes': {'deploymentSpec': {'executors': result}}}}


def apply_retry_policy(spec: Dict[str, Any], kfp: KubeflowConfig) -> None:
  """Every task's PipelineTaskSpec.retryPolicy, if retries are configured: backend 2.4.1's
  Argo compiler makes it the retryStrategy of the task's executor (config.RETRY_GENERATIONS;
  the config refuses retries for generations that would ignore them)."""
  policy = kfp.retry_policy()
  if policy:
    for task in spec['root']['dag']['tasks'].values():
      task['retryPolicy'] = dict(policy)


def root_parameter_defaults(params: PipelineParams, kfp: KubeflowConfig) -> Dict[str, Any]:
  """The pipeline parameters' defaults: the values this spec was compiled with."""
  from pipeline import pipeline  # pylint: disable=import-outside-toplevel
  run_values = pipeline.runtime_parameters(params, locations(params, kfp))
  return {value.name: value.default for value in run_values}


def add_parameter_defaults(spec: Dict[str, Any], defaults: Dict[str, Any]) -> None:
  """TFX's compiler lists the RuntimeParameters in root.inputDefinitions with their types
  only, which makes each one required in every run; with a default (and `isOptional`, as
  kfp's own compiler writes them) a run or schedule sets only what it changes."""
  declared = spec['root'].get('inputDefinitions', {}).get('parameters', {})
  if set(declared) != set(defaults):
    raise CompileError(f'pipeline parameters: expected {sorted(defaults)} in the compiled '
                       f'spec, found {sorted(declared)}')
  for name, default in defaults.items():
    declared[name]['defaultValue'] = default
    declared[name]['isOptional'] = True


def compile_spec(params: PipelineParams, kfp: KubeflowConfig) -> Dict[str, Any]:
  """The pipeline spec as a dict (schema 2.1), adapted as the module doc says."""
  # pylint: disable=import-outside-toplevel
  from google.protobuf import json_format
  from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2, pipeline_builder
  # pylint: enable=import-outside-toplevel
  check_trainer_image(kfp)
  images: Any = kfp.image
  if kfp.trainer_image != kfp.image:
    images = {pipeline_builder.DEFAULT_IMAGE_PATH_KEY: kfp.image, ids.TRAINER: kfp.trainer_image}
  runner = v2.KubeflowV2DagRunner(
      config=v2.KubeflowV2DagRunnerConfig(
          default_image=images, default_commands=list(ENTRYPOINT_COMMAND),
          use_pipeline_spec_2_1=True))
  job = runner.run(build(params, kfp), write_out=False)
  spec = job['pipelineSpec']
  spec['defaultPipelineRoot'] = kfp.pipeline_root
  add_parameter_defaults(spec, root_parameter_defaults(params, kfp))
  tasks = spec['root']['dag']['tasks']
  for never_cached in NEVER_CACHED:
    tasks[never_cached].setdefault('cachingOptions', {})['enableCache'] = False
  apply_retry_policy(spec, kfp)
  # TFX's file-based ExampleGen container ignores with_platform_config; set it here.
  example_gen = spec['deploymentSpec']['executors'][executor_label(ids.EXAMPLE_GEN)]
  if 'resources' not in example_gen['container']:
    example_gen['container']['resources'] = json_format.MessageToDict(resource_spec(kfp))
  return spec


def write_spec(spec: Dict[str, Any], platform: Dict[str, Any], path: str) -> Path:
  """One YAML document for the pipeline spec, a second for the platform spec if any."""
  out = Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  header = (f'# PIPELINE DEFINITION\n# Name: {spec["pipelineInfo"]["name"]}\n'
            f'# Compiled by kubeflow.runner from pipeline.create_pipeline '
            f'({spec.get("sdkVersion", "tfx")}).\n')
  documents = [spec] + ([platform] if platform else [])
  out.write_text(header + yaml.safe_dump_all(documents, sort_keys=True))
  return out


def compile_pipeline(params: PipelineParams, kfp: KubeflowConfig,
                     output: Optional[str] = None) -> Path:
  """Builds, compiles and writes the spec; returns its path."""
  spec = compile_spec(params, kfp)
  containers = sorted(label for label, executor in spec['deploymentSpec']['executors'].items()
                      if 'container' in executor)
  platform = kubernetes_platform_spec(kfp, containers)
  return write_spec(spec, platform, output or kfp.spec_file(params.pipeline_name))
