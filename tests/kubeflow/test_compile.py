"""`python -m kubeflow compile`: the local DAG as a KFP v2 spec that kfp itself loads."""

from __future__ import annotations

import json
from typing import Any, Dict, Set

import pytest
import yaml
from google.protobuf import json_format

from kubeflow import config as kfp_configs
from kubeflow import runner
from pipeline import component_ids as ids
from pipeline import configs, pipeline
from tests.kubeflow.conftest import GPU_IMAGE, IMAGE, PIPELINE_ROOT, SERVING_URI, compile_args

ENTRYPOINT = ['python', '-m', 'kubeflow.entrypoint']


def component_of(task_name: str) -> str:
  """TFX compiles the resolver node into two tasks named `<node id>-<step>`."""
  return task_name.split('-')[0]


def spec_edges(tasks) -> Dict[str, Set[str]]:
  """component -> components it depends on, from dependentTasks and artifact inputs."""
  edges: Dict[str, Set[str]] = {}
  for name, task in tasks.items():
    upstream = set(task.get('dependentTasks', []))
    for source in task.get('inputs', {}).get('artifacts', {}).values():
      upstream.add(source['taskOutputArtifact']['producerTask'])
    edges.setdefault(component_of(name), set()).update(
        component_of(u) for u in upstream if component_of(u) != component_of(name))
  return edges


def local_edges(dag) -> Dict[str, Set[str]]:
  return {c.id: {u.id for u in c.upstream_nodes} for c in dag.components}


def root_parameters(spec) -> Dict[str, Any]:
  return spec['root']['inputDefinitions']['parameters']


def local_dag():
  config = configs.load(environ={}, eval_size=20)
  return pipeline.create_pipeline(config.params(), config.locations())


def test_kfp_loads_the_spec_and_its_platform_document(compiled):
  from kfp import components  # pylint: disable=import-outside-toplevel
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=import-outside-toplevel
  loaded = components.load_component_from_file(str(compiled.path))
  assert loaded.name == 'mnist'
  assert loaded.pipeline_spec.schema_version == '2.1.0'
  assert set(loaded.pipeline_spec.root.dag.tasks) == set(compiled.tasks)
  assert set(loaded.component_spec.platform_spec.platforms) == {'kubernetes'}
  # The upload path: kfp.Client parses both documents into the protos it sends.
  json_format.ParseDict(compiled.spec, pipeline_spec_pb2.PipelineSpec())
  json_format.ParseDict(compiled.platform, pipeline_spec_pb2.PlatformSpec())


def test_every_local_component_runs_in_the_same_dependency_order(compiled):
  """The spec is the local DAG task for task, edge for edge: no resolver node (open-source
  KFP rejects them), the Evaluator's baseline is the served model it reads itself."""
  expected = local_edges(local_dag())
  assert set(expected) == set(ids.ALL)
  assert spec_edges(compiled.tasks) == expected
  order = {cid: i for i, cid in enumerate(ids.ALL)}
  for component, upstream in spec_edges(compiled.tasks).items():
    assert all(order[u] < order[component] for u in upstream), component
  evaluator = compiled.spec['components'][ids.EVALUATOR]
  assert 'baseline_model' not in evaluator['inputDefinitions'].get('artifacts', {})
  assert not [e for e in compiled.spec['deploymentSpec']['executors'].values()
              if 'resolver' in e]


def test_trainer_alone_requests_gpus_and_the_gpu_pool(compiled):
  for task in compiled.tasks:
    resources = compiled.container(task).get('resources', {})
    if task == ids.TRAINER:
      assert resources['accelerator'] == {'type': 'nvidia.com/gpu', 'count': '2'}
    else:
      assert 'accelerator' not in resources, task
  executors = compiled.platform['platforms']['kubernetes']['deploymentSpec']['executors']
  trainer = executors[runner.executor_label(ids.TRAINER)]
  assert trainer['nodeSelector'] == {
      'labels': {'cloud.google.com/gke-accelerator': 'nvidia-tesla-t4'}}
  assert trainer['tolerations'] == [
      {'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'},
      {'key': 'pool', 'operator': 'Equal', 'value': 'gpu', 'effect': 'NoExecute'}]
  for label, settings in executors.items():
    assert settings['pvcMount'] == [
        {'constant': 'mnist-data', 'mountPath': str(compiled.data_dir.parent)}], label
    if label != runner.executor_label(ids.TRAINER):
      assert 'nodeSelector' not in settings and 'tolerations' not in settings, label


def test_images_root_paths_and_entrypoint_are_the_configured_ones(compiled):
  assert compiled.spec['defaultPipelineRoot'] == PIPELINE_ROOT
  for task in compiled.tasks:
    container = compiled.container(task)
    assert container['image'] == (GPU_IMAGE if task == ids.TRAINER else IMAGE), task
    assert container['command'] == ENTRYPOINT, task
    assert '--direct_running_mode=in_memory' in container['args'], task
  params = compiled.tasks[ids.EXAMPLE_GEN]['inputs']['parameters']
  assert params['input_base'] == {'componentInputParameter': pipeline.DATA_URI}
  assert root_parameters(compiled.spec)[pipeline.DATA_URI]['defaultValue'] == str(
      compiled.data_dir)
  pusher = compiled.tasks[ids.PUSHER]['inputs']['parameters']
  destination = json.loads(pusher['push_destination']['runtimeValue']['constant'])
  assert destination['filesystem']['base_directory'] == f'{SERVING_URI}/mnist'


def test_data_and_served_model_readers_are_never_cached_the_rest_follows_the_config(compiled):
  """New spans and a newly served model are not inputs KFP's cache can see."""
  for name, task in compiled.tasks.items():
    assert task['cachingOptions']['enableCache'] is (
        name not in (ids.EXAMPLE_GEN, ids.EVALUATOR)), name


@pytest.mark.parametrize('overrides, message', [
    ({}, 'data_uri is not set'),
    ({'data_uri': 's3://bucket/mnist', 'serving_uri': 'gs://b/s'}, "'s3://bucket/mnist' cannot"),
    ({'data_uri': '/data/mnist', 'serving_uri': 'gs://b/s'}, 'no PVC is mounted there'),
    ({'data_uri': 'gs://b/mnist', 'serving_uri': 'minio://mlpipeline/serving'},
     'serving_uri'),
    ({'data_uri': '/mnt/datasets/mnist', 'serving_uri': 'gs://b/s',
      'pvc_mounts': 'd:/mnt/data'}, 'no PVC is mounted there'),
])
def test_locations_a_pod_cannot_use_are_refused_before_compiling(overrides, message):
  with pytest.raises(runner.CompileError, match=message):
    runner.check_locations(kfp_configs.KubeflowConfig(**overrides))


def test_locations_on_gcs_or_a_mounted_pvc_are_accepted():
  runner.check_locations(kfp_configs.KubeflowConfig(
      data_uri='/mnt/data/mnist', serving_uri='gs://b/serving', pvc_mounts='d:/mnt/data'))
  runner.check_locations(kfp_configs.KubeflowConfig(
      data_uri='gs://b/mnist', serving_uri='/models', pvc_mounts='m:/models'))


def test_compile_takes_no_local_runner_paths(capsys):
  """The local folders are the local runner's config; Kubeflow does not expose them."""
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as exit_info:
    main(['compile', '--data-dir', '/tmp/mnist'])
  assert exit_info.value.code == 2
  assert 'unrecognized arguments: --data-dir' in capsys.readouterr().err


@pytest.mark.parametrize('beam_workers, cpu_limit, extra, expected', [
    (0, 0.0, '', '--direct_num_workers=0'),
    (0, 2.5, '', '--direct_num_workers=2'),
    (3, 2.0, '', '--direct_num_workers=3'),
    (0, 4.0, ' --direct_num_workers=1', '--direct_num_workers=1'),
])
def test_beam_workers_count_the_pod_not_the_compiling_machine(beam_workers, cpu_limit,
                                                              extra, expected):
  args = runner.beam_args(
      configs.PipelineParams(beam_workers=beam_workers),
      kfp_configs.KubeflowConfig(cpu_limit=cpu_limit,
                                 beam_args='--direct_running_mode=multi_processing' + extra))
  assert args[0] == '--direct_running_mode=multi_processing'
  assert [a for a in args if a.startswith('--direct_num_workers')] == [expected]


@pytest.mark.parametrize('beam_workers, cpu_limit, expected', [
    (1, 0.0, ['--direct_num_workers=1', '--direct_running_mode=in_memory']),
    (0, 3.0, ['--direct_num_workers=3', '--direct_running_mode=multi_processing']),
    (0, 0.0, ['--direct_num_workers=0', '--direct_running_mode=multi_processing']),
])
def test_default_beam_flags_are_the_ones_the_docs_describe(beam_workers, cpu_limit, expected):
  """docs/kubeflow.md: --beam-workers (default 1, in-process), with 0 the CPU limit, else
  a worker per node core."""
  params = configs.load(environ={}, config_class=configs.PipelineParams,
                        beam_workers=beam_workers)
  assert params.beam_workers == beam_workers
  args = runner.beam_args(params, kfp_configs.KubeflowConfig(cpu_limit=cpu_limit))
  assert args == [*expected, configs.NO_EXTRA_PACKAGES]
  docs = (configs.REPO_ROOT / 'docs' / 'kubeflow.md').read_text()
  assert ('`--direct_num_workers` is `--beam-workers` (default 1: one worker, in-process); '
          'with `--beam-workers 0`, the `--cpu-limit`, else 0') in ' '.join(docs.split())
  assert configs.PipelineParams.beam_workers == 1


@pytest.mark.parametrize('beam_args, expected', [
    ('--direct_running_mode=multi_processing', True),
    ('--runner=DirectRunner --setup_file=/app/setup.py', False),
    ('--runner=DataflowRunner --project=p --sdk_container_image=gcr.io/p/mnist', False),
])
def test_direct_runner_tasks_skip_tfx_packaging_itself(beam_args, expected):
  args = runner.beam_args(configs.PipelineParams(),
                          kfp_configs.KubeflowConfig(beam_args=beam_args))
  assert (configs.NO_EXTRA_PACKAGES in args) == expected
  if 'DataflowRunner' in beam_args:
    assert args == beam_args.split()  # other runners get exactly what was asked for


def test_uri_locations_reach_the_spec_unchanged(tmp_path):
  """gs:// data and pipeline root go into the spec as given; nothing resolves them."""
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'gcs.yaml'
  assert main(['compile', '--output', str(out), '--eval-size', '20', '--gpu-count', '0',
               '--data-uri', 'gs://bucket/mnist', '--pipeline-root', 'gs://bucket/root',
               '--serving-uri', 'gs://bucket/serving']) == 0
  spec = next(yaml.safe_load_all(out.read_text()))
  assert spec['defaultPipelineRoot'] == 'gs://bucket/root'
  tasks = spec['root']['dag']['tasks']
  assert root_parameters(spec)[pipeline.DATA_URI]['defaultValue'] == 'gs://bucket/mnist'
  push = json.loads(tasks[ids.PUSHER]['inputs']['parameters']['push_destination']
                    ['runtimeValue']['constant'])
  assert push['filesystem']['base_directory'] == 'gs://bucket/serving/mnist'
def test_every_task_requests_cpu_and_memory(compiled):
  """A namespace with a ResourceQuota admits no pod without requests."""
  for task in compiled.tasks:
    resources = compiled.container(task)['resources']
    assert (resources['cpuRequest'], resources['memoryRequest']) == (0.5, 2.0), task


def test_requests_never_exceed_the_limits():
  spec = runner.resource_spec(kfp_configs.KubeflowConfig(cpu_limit=0.25, memory_limit=1.0))
  assert (spec.cpu_request, spec.memory_request) == (0.25, 1.0)
  assert (spec.cpu_limit, spec.memory_limit) == (0.25, 1.0)


def test_gpus_without_the_cuda_image_are_refused(capsys, data_dir, tmp_path):
  """The CPU image has no CUDA libraries: its Trainer would hold a GPU and train on CPU."""
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  argv = compile_args(data_dir, tmp_path / 'spec.yaml', '--gpu-count', '1')
  at = argv.index('--gpu-image')
  del argv[at:at + 2]
  assert main(argv) == 1
  err = capsys.readouterr().err
  assert 'gpu_count is 1 but gpu_image is not set' in err and '--gpu-count 0' in err
  assert not (tmp_path / 'spec.yaml').exists()
  assert main([*argv, '--gpu-count', '0', '--output', str(tmp_path / 'cpu.yaml')]) == 0


def test_retries_are_every_task_s_retry_policy_on_backend_2_4_1(compiled_with_retries,
                                                                  compiled):
  """PipelineTaskSpec.retryPolicy of every root task, which 2.4.1's Argo compiler turns
  into the executor's retryStrategy (limit, backoff duration and factor)."""
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=import-outside-toplevel
  policies = [task.get('retryPolicy') for task in compiled_with_retries.tasks.values()]
  assert policies == [{'maxRetryCount': 2, 'backoffDuration': '30s',
                       'backoffFactor': 2.0}] * len(compiled.tasks)
  proto = json_format.ParseDict(compiled_with_retries.spec, pipeline_spec_pb2.PipelineSpec())
  trainer = proto.root.dag.tasks[ids.TRAINER].retry_policy
  assert (trainer.max_retry_count, trainer.backoff_duration.seconds,
          trainer.backoff_factor) == (2, 30, 2.0)
  assert not [t for t in compiled.tasks.values() if 'retryPolicy' in t]


def test_run_values_are_pipeline_parameters_with_the_config_as_defaults(compiled):
  """A schedule changes epochs, learning rate, threshold and data without recompiling:
  each is declared at the root, typed, defaulting to the compiled config, and reaches its
  task through componentInputParameter."""
  assert root_parameters(compiled.spec) == {
      'epochs': {'parameterType': 'NUMBER_INTEGER', 'defaultValue': 24, 'isOptional': True},
      'learning_rate': {'parameterType': 'NUMBER_DOUBLE', 'defaultValue': 0.003,
                        'isOptional': True},
      'accuracy_threshold': {'parameterType': 'NUMBER_DOUBLE', 'defaultValue': 0.99,
                             'isOptional': True},
      'data_uri': {'parameterType': 'STRING', 'defaultValue': str(compiled.data_dir),
                   'isOptional': True}}
  wired = {(task, name): value['componentInputParameter']
           for task, spec in compiled.tasks.items()
           for name, value in spec['inputs'].get('parameters', {}).items()
           if 'componentInputParameter' in value}
  assert wired == {(ids.TRAINER, 'epochs'): 'epochs',
                   (ids.TRAINER, 'learning_rate'): 'learning_rate',
                   (ids.EVALUATOR, 'accuracy_threshold'): 'accuracy_threshold',
                   (ids.EXAMPLE_GEN, 'input_base'): 'data_uri'}
  # Each task's own input declares the type its executor receives (TFX's entrypoint
  # turns a NUMBER_INTEGER's double back into an int).
  trainer = compiled.spec['components'][ids.TRAINER]['inputDefinitions']['parameters']
  assert trainer['epochs'] == {'parameterType': 'NUMBER_INTEGER'}
  assert trainer['learning_rate'] == {'parameterType': 'NUMBER_DOUBLE'}
  evaluator = compiled.spec['components'][ids.EVALUATOR]['inputDefinitions']['parameters']
  assert evaluator['accuracy_threshold'] == {'parameterType': 'NUMBER_DOUBLE'}


def test_parameter_defaults_follow_the_config(tmp_path):
  from kubeflow.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'quick.yaml'
  assert main(['compile', '--output', str(out), '--gpu-count', '0', '--preset', 'quick',
               '--learning-rate', '0.01', '--accuracy-threshold', '0.95',
               '--data-uri', 'gs://bucket/mnist', '--pipeline-root', 'gs://bucket/root',
               '--serving-uri', 'gs://bucket/serving']) == 0
  spec = next(yaml.safe_load_all(out.read_text()))
  assert {name: p['defaultValue'] for name, p in root_parameters(spec).items()} == {
      'epochs': 3, 'learning_rate': 0.01, 'accuracy_threshold': 0.95,
      'data_uri': 'gs://bucket/mnist'}


def test_the_local_dag_binds_no_runtime_parameter():
  """Locally the values are fixed in the DAG, as before: no new execution properties, so
  the local cache keys of ExampleGen and the Evaluator stay what they were."""
  dag = local_dag()
  for component in dag.components:
    for name, value in component.exec_properties.items():
      assert not isinstance(value, pipeline.data_types.RuntimeParameter), (component.id, name)
  by_id = {c.id: c for c in dag.components}
  assert by_id[ids.TRAINER].exec_properties['epochs'] is None
  assert by_id[ids.EVALUATOR].exec_properties['accuracy_threshold'] is None
