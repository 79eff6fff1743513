"""`create_pipeline(params, locations)`: the DAG's wiring, shared by every runner."""

from __future__ import annotations

import dataclasses
from typing import List, NamedTuple, Optional, Sequence

import tensorflow_model_analysis as tfma
# TFX's own modules rather than `tfx.v1`: importing `tfx.v1` also imports its Google Cloud
# extensions (google.cloud.aiplatform), ~6 s of every command's start-up on 2 cores.
from tfx.components import Evaluator, ExampleValidator, StatisticsGen, Trainer, Transform
from tfx.dsl.components.base import base_node
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy)
from tfx.orchestration import metadata
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2, transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components import atomic_pusher
from components.anomalies_gate import AnomaliesGate
from components.curated_schema import CuratedSchemaGen
from components.mnist_example_gen.component import MnistExampleGen
from pipeline import component_ids as ids
from pipeline.configs import Locations, PipelineParams
from pipeline.fingerprint import code_fingerprint
from trainer import features

PREPROCESSING_MODULE = 'trainer.preprocessing'
RUN_MODULE = 'trainer.run'
PREPROCESSING_FN = f'{PREPROCESSING_MODULE}.preprocessing_fn'
RUN_FN = f'{RUN_MODULE}.run_fn'
OVERALL_SLICE = tfma.SlicingSpec()


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


class DataValidation(NamedTuple):
  """Statistics, the curated schema, the check against it, and the gate that stops the
  run on anomalies before anything trains."""
  statistics_gen: StatisticsGen
  schema_gen: CuratedSchemaGen
  example_validator: ExampleValidator
  anomalies_gate: base_node.BaseNode


def data_validation(params: PipelineParams, locations: Locations,
                    examples: Channel) -> DataValidation:
  statistics_gen = StatisticsGen(examples=examples).with_id(ids.STATISTICS_GEN)
  schema_gen = CuratedSchemaGen(locations.schema).with_id(ids.SCHEMA_GEN)
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema']).with_id(ids.EXAMPLE_VALIDATOR)
  gate = AnomaliesGate(anomalies=example_validator.outputs['anomalies'],
                       warn_only=params.anomalies_warn_only).with_id(ids.ANOMALIES_GATE)
  return DataValidation(statistics_gen, schema_gen, example_validator, gate)


class ModelGate(NamedTuple):
  """The last blessed model (None where the backend cannot run resolvers), the
  Evaluator's verdict on the candidate, the atomic push."""
  baseline_resolver: Optional[Resolver]
  evaluator: Evaluator
  pusher: atomic_pusher.AtomicPusher

  def nodes(self) -> List[base_node.BaseNode]:
    return [node for node in self if node is not None]


def model_gate(params: PipelineParams, locations: Locations, examples: Channel,
               model: Channel, baseline_model: bool = True) -> ModelGate:
  """Without `baseline_model` (backends that cannot run resolvers, e.g. open-source
  Kubeflow) only the absolute bound gates."""
  resolver = Resolver(
      strategy_class=LatestBlessedModelStrategy,
      model=Channel(type=standard_artifacts.Model),
      model_blessing=Channel(type=standard_artifacts.ModelBlessing),
  ).with_id(ids.BASELINE_RESOLVER) if baseline_model else None

  evaluator = Evaluator(
      examples=examples,
      example_splits=[features.TEST_SPLIT],
      model=model,
      baseline_model=resolver.outputs['model'] if resolver else None,
      eval_config=eval_config(params.accuracy_threshold)).with_id(ids.EVALUATOR)

  pusher = atomic_pusher.AtomicPusher(
      model=model,
      model_blessing=evaluator.outputs['blessing'],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=locations.serving))).with_id(ids.PUSHER)
  return ModelGate(resolver, evaluator, pusher)


def create_pipeline(
    params: PipelineParams,
    locations: Locations,
    beam_pipeline_args: Optional[Sequence[str]] = None,
    baseline_model: bool = True,
    example_gen: Optional[base_node.BaseNode] = None,
) -> Pipeline:
  """The whole DAG. `beam_pipeline_args` default to the parameters' local Beam settings;
  `baseline_model` is off where the backend cannot run resolvers. `example_gen` replaces
  the MNIST ExampleGen by any node with an `examples` output (the reliability tests feed
  hand-written bad examples through the real DAG that way)."""
  example_gen = example_gen or MnistExampleGen(
      data_dir=locations.data, eval_size=params.eval_size,
      limit_train=params.limit_train, limit_test=params.limit_test).with_id(ids.EXAMPLE_GEN)
  examples = example_gen.outputs['examples']

  validation = data_validation(params, locations, examples)
  schema = validation.schema_gen.outputs['schema']

  transform = Transform(
      examples=examples,
      schema=schema,
      preprocessing_fn=PREPROCESSING_FN,
      splits_config=transform_pb2.SplitsConfig(analyze=[features.TRAIN_SPLIT]),
      materialize=False,  # the Trainer applies the transform graph as it reads (trainer/data.py)
      custom_config={'code_fingerprint': code_fingerprint(PREPROCESSING_MODULE)},
  ).with_id(ids.TRANSFORM)
  transform.add_upstream_node(validation.anomalies_gate)  # nothing trains on stopped data

  trainer = Trainer(
      run_fn=RUN_FN,
      examples=examples,
      transform_graph=transform.outputs['transform_graph'],
      schema=schema,
      train_args=trainer_pb2.TrainArgs(splits=[features.TRAIN_SPLIT]),
      eval_args=trainer_pb2.EvalArgs(splits=[features.EVAL_SPLIT]),
      custom_config={'training': dataclasses.asdict(params.training),
                     'code_fingerprint': code_fingerprint(RUN_MODULE)}).with_id(ids.TRAINER)

  gate = model_gate(params, locations, examples, trainer.outputs['model'], baseline_model)
  return Pipeline(
      pipeline_name=params.pipeline_name,
      pipeline_root=locations.pipeline_root,
      components=[example_gen, *validation, transform, trainer, *gate.nodes()],
      enable_cache=params.enable_cache,
      metadata_connection_config=(
          metadata.sqlite_metadata_connection_config(locations.metadata)
          if locations.metadata else None),
      beam_pipeline_args=list(beam_pipeline_args if beam_pipeline_args is not None
                              else params.beam_pipeline_args()))
