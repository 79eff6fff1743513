"""`create_pipeline(config)`: the DAG's wiring, shared by the local and Kubeflow runners."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import List, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
# TFX's own modules rather than `tfx.v1`: importing `tfx.v1` also imports its Google Cloud
# extensions (google.cloud.aiplatform), ~6 s of every command's start-up on 2 cores.
from tfx.components import Evaluator, ExampleValidator, StatisticsGen, Trainer, Transform
from tfx.dsl.components.base import base_node
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy)
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2, transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components import atomic_pusher
from components.anomalies_gate import AnomaliesGate
from components.curated_schema import CuratedSchemaGen
from components.mnist_example_gen.component import MnistExampleGen
from pipeline.configs import PipelineConfig
from trainer import features

PREPROCESSING_FN = 'trainer.preprocessing.preprocessing_fn'
RUN_FN = 'trainer.run.run_fn'
TRAINER_DIR = Path(__file__).resolve().parent.parent / 'trainer'

# Component ids, in the order they run; summaries and tests read them back from MLMD.
COMPONENT_IDS = ('MnistExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'ExampleValidator',
                 'AnomaliesGate', 'Transform', 'Trainer', 'LatestBlessedModelResolver',
                 'Evaluator', 'Pusher')
OVERALL_SLICE = tfma.SlicingSpec()


def user_code_fingerprint() -> str:
  """Hash of the trainer modules: TFX caches by function name, so a code edit must
  change an input to re-run Transform and Trainer."""
  digest = hashlib.sha256()
  for path in sorted(TRAINER_DIR.glob('*.py')):
    digest.update(path.name.encode() + path.read_bytes())
  return digest.hexdigest()[:16]


def eval_config(accuracy_threshold: float) -> tfma.EvalConfig:
  """Gate on overall test accuracy: an absolute bound, and no worse than the last blessed
  model. Per-label accuracy is computed for the record but gates nothing: a bound without
  a slice would apply to every slice, each label's few hundred examples included."""
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          signature_name=features.SERVING_TF_EXAMPLE,
          label_key=features.LABEL_KEY,
          prediction_key=features.CLASSIFY_SCORES_OUTPUT,
          model_type=tfma.TF_GENERIC)],
      slicing_specs=[OVERALL_SLICE, tfma.SlicingSpec(feature_keys=[features.LABEL_KEY])],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name='ExampleCount'),
          tfma.MetricConfig(
              class_name='SparseCategoricalAccuracy',
              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                  slicing_specs=[OVERALL_SLICE],
                  threshold=tfma.MetricThreshold(
                      value_threshold=tfma.GenericValueThreshold(
                          lower_bound={'value': accuracy_threshold}),
                      change_threshold=tfma.GenericChangeThreshold(
                          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                          absolute={'value': -1e-10})))]),
      ])])


def data_validation(config: PipelineConfig, examples: Channel,
                    schema_file: Optional[str] = None) -> List[base_node.BaseNode]:
  """Statistics, the curated schema, the check against it, and the gate that stops the
  run on anomalies: [StatisticsGen, ImportSchemaGen, ExampleValidator, AnomaliesGate]."""
  statistics_gen = StatisticsGen(examples=examples)
  schema_gen = CuratedSchemaGen(schema_file or str(config.schema_path)).with_id(
      'ImportSchemaGen')
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema'])
  gate = AnomaliesGate(anomalies=example_validator.outputs['anomalies'],
                       warn_only=config.anomalies_warn_only).with_id('AnomaliesGate')
  return [statistics_gen, schema_gen, example_validator, gate]


def model_gate(config: PipelineConfig, examples: Channel, model: Channel,
               serving_dir: Optional[str] = None,
               baseline_model: bool = True) -> List[base_node.BaseNode]:
  """The last blessed model, the Evaluator's verdict on the candidate, the atomic push:
  [LatestBlessedModelResolver, Evaluator, Pusher]. Without `baseline_model` (backends that
  cannot run resolvers, e.g. open-source Kubeflow) only the absolute bound gates."""
  model_resolver = Resolver(
      strategy_class=LatestBlessedModelStrategy,
      model=Channel(type=standard_artifacts.Model),
      model_blessing=Channel(type=standard_artifacts.ModelBlessing),
  ).with_id('LatestBlessedModelResolver')

  evaluator = Evaluator(
      examples=examples,
      example_splits=[features.TEST_SPLIT],
      model=model,
      baseline_model=model_resolver.outputs['model'] if baseline_model else None,
      eval_config=eval_config(config.accuracy_threshold))

  pusher = atomic_pusher.AtomicPusher(
      model=model,
      model_blessing=evaluator.outputs['blessing'],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=serving_dir or str(config.model_serving_dir)))).with_id('Pusher')
  return [model_resolver, evaluator, pusher] if baseline_model else [evaluator, pusher]


def create_pipeline(
    config: PipelineConfig,
    pipeline_root: Optional[str] = None,
    data_dir: Optional[str] = None,
    serving_dir: Optional[str] = None,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    schema_file: Optional[str] = None,
    example_gen: Optional[base_node.BaseNode] = None,
    baseline_model: bool = True,
) -> Pipeline:
  """The whole DAG. Paths default to the config's local folders; Kubeflow passes its own.
  `example_gen` replaces the MNIST ExampleGen by any node with an `examples` output (the
  reliability tests feed hand-written bad examples through the real DAG that way)."""
  example_gen = example_gen or MnistExampleGen(
      data_dir=data_dir or str(config.data_dir), eval_size=config.eval_size,
      limit_train=config.limit_train, limit_test=config.limit_test)
  examples = example_gen.outputs['examples']

  validation = data_validation(config, examples, schema_file)
  schema = validation[1].outputs['schema']

  fingerprint = user_code_fingerprint()
  transform = Transform(
      examples=examples,
      schema=schema,
      preprocessing_fn=PREPROCESSING_FN,
      splits_config=transform_pb2.SplitsConfig(analyze=[features.TRAIN_SPLIT]),
      materialize=False,  # the Trainer applies the transform graph as it reads (trainer/data.py)
      custom_config={'code_fingerprint': fingerprint})
  transform.add_upstream_node(validation[-1])  # nothing trains on data the gate stopped

  trainer = Trainer(
      run_fn=RUN_FN,
      examples=examples,
      transform_graph=transform.outputs['transform_graph'],
      schema=schema,
      train_args=trainer_pb2.TrainArgs(splits=[features.TRAIN_SPLIT]),
      eval_args=trainer_pb2.EvalArgs(splits=[features.EVAL_SPLIT]),
      custom_config={'training': dataclasses.asdict(config.training),
                     'code_fingerprint': fingerprint})

  return Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=pipeline_root or str(config.pipeline_root),
      components=[example_gen, *validation, transform, trainer,
                  *model_gate(config, examples, trainer.outputs['model'], serving_dir,
                             baseline_model)],
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=(beam_pipeline_args if beam_pipeline_args is not None
                          else config.beam_pipeline_args()))
