"""`create_pipeline(params, locations)`: the DAG's wiring, shared by every runner."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Optional, Sequence

import tensorflow_model_analysis as tfma
# TFX's own modules rather than `tfx.v1`: importing `tfx.v1` also imports its Google Cloud
# extensions (google.cloud.aiplatform), ~6 s of every command's start-up on 2 cores.
from tfx.components import ExampleValidator, StatisticsGen, Transform
from tfx.dsl.components.base import base_node
from tfx.orchestration import data_types, metadata
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2, transform_pb2
from tfx.types.channel import Channel

from components import atomic_pusher
from components.anomalies_gate import AnomaliesGate
from components.curated_schema import CuratedSchemaGen
from components.drift_check import DriftCheck
from components.mnist_example_gen.component import MnistExampleGen
from components.runtime_trainer import RuntimeTrainer
from components.served_baseline import ServedBaselineEvaluator
from pipeline import component_ids as ids
from pipeline.configs import DRIFT_BOUNDS, RUNTIME_PARAMETERS, Locations, PipelineParams
from pipeline.fingerprint import code_fingerprint
from trainer import features

EXAMPLE_GEN_MODULE = 'components.mnist_example_gen.executor'
PREPROCESSING_MODULE = 'trainer.preprocessing'
RUN_MODULE = 'trainer.run'
PREPROCESSING_FN = f'{PREPROCESSING_MODULE}.preprocessing_fn'
RUN_FN = f'{RUN_MODULE}.run_fn'
# The gate reads the canonical test split: the base data's slice (span 0). Each span's
# holdout is its own slice beside it, reported and not gated.
GATE_SLICE = tfma.SlicingSpec(feature_values={features.SPAN_KEY: str(features.BASE_SPAN)})
# The pipeline parameters of a compiled (Kubeflow) spec: configs.RUNTIME_PARAMETERS.
EPOCHS, LEARNING_RATE, ACCURACY_THRESHOLD, DATA_URI = RUNTIME_PARAMETERS


class RunValues(NamedTuple):
  """The four values a compiled spec takes per run: plain values (the local runner, whose
  DAG is then exactly the one without them) or TFX RuntimeParameters (Kubeflow)."""
  epochs: Optional[Any] = None
  learning_rate: Optional[Any] = None
  accuracy_threshold: Optional[Any] = None
  data: Optional[Any] = None


def runtime_parameters(params: PipelineParams, locations: Locations) -> RunValues:
  """RuntimeParameters named as RUNTIME_PARAMETERS, defaulting to the config's values."""
  defaults = {EPOCHS: params.training.epochs, LEARNING_RATE: params.training.learning_rate,
              ACCURACY_THRESHOLD: params.accuracy_threshold, DATA_URI: locations.data}
  made = {name: data_types.RuntimeParameter(name=name, ptype=kind, default=kind(defaults[name]))
          for name, kind in RUNTIME_PARAMETERS.items()}
  return RunValues(made[EPOCHS], made[LEARNING_RATE], made[ACCURACY_THRESHOLD], made[DATA_URI])


def eval_config(accuracy_threshold: float) -> tfma.EvalConfig:
  """Gate on test accuracy: an absolute bound, and no worse than the served model's on the
  same examples (evaluated side by side; with nothing served the bound alone gates).
  Per-label and per-span accuracy are computed for the record but gate nothing: a bound
  without a slice would apply to every slice, each label's few hundred examples included."""
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          signature_name=features.SERVING_TF_EXAMPLE,
          label_key=features.LABEL_KEY,
          prediction_key=features.CLASSIFY_SCORES_OUTPUT,
          model_type=tfma.TF_GENERIC)],
      slicing_specs=[tfma.SlicingSpec(feature_keys=[features.SPAN_KEY]),
                     tfma.SlicingSpec(feature_keys=[features.LABEL_KEY])],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name='ExampleCount'),
          tfma.MetricConfig(
              class_name='SparseCategoricalAccuracy',
              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                  slicing_specs=[GATE_SLICE],
                  threshold=tfma.MetricThreshold(
                      value_threshold=tfma.GenericValueThreshold(
                          lower_bound={'value': accuracy_threshold}),
                      change_threshold=tfma.GenericChangeThreshold(
                          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                          absolute={'value': -1e-10})))]),
      ])])


class DataValidation(NamedTuple):
  """Statistics, the curated schema, the check against it, and the two gates that stop
  the run before anything trains: anomalies against the schema, drift of the newest span."""
  statistics_gen: StatisticsGen
  schema_gen: CuratedSchemaGen
  example_validator: ExampleValidator
  anomalies_gate: base_node.BaseNode
  drift_check: base_node.BaseNode


def data_validation(params: PipelineParams, locations: Locations,
                    examples: Channel) -> DataValidation:
  statistics_gen = StatisticsGen(examples=examples).with_id(ids.STATISTICS_GEN)
  schema_gen = CuratedSchemaGen(locations.schema).with_id(ids.SCHEMA_GEN)
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'],
      # Span holdouts are often tiny or empty; their rows are the spans' own, checked in train.
      exclude_splits=[features.HOLDOUT_SPLIT]).with_id(ids.EXAMPLE_VALIDATOR)
  gate = AnomaliesGate(anomalies=example_validator.outputs['anomalies'],
                       warn_only=params.anomalies_warn_only).with_id(ids.ANOMALIES_GATE)
  drift = DriftCheck(examples=examples, drift_schema=DRIFT_BOUNDS.read_text(),
                     min_examples=params.drift_min_examples,
                     warn_only=params.anomalies_warn_only).with_id(ids.DRIFT_CHECK)
  return DataValidation(statistics_gen, schema_gen, example_validator, gate, drift)


class ModelGate(NamedTuple):
  """The Evaluator's verdict on the candidate against the served model, the atomic push."""
  evaluator: ServedBaselineEvaluator
  pusher: atomic_pusher.AtomicPusher


def code_fingerprints() -> Dict[str, str]:
  """Transform's and the Trainer's code keys, hashed once per DAG build."""
  return {'transform': code_fingerprint(PREPROCESSING_MODULE),
          'trainer': code_fingerprint(RUN_MODULE)}


def model_gate(params: PipelineParams, locations: Locations, examples: Channel,
               model: Channel, fingerprints: Dict[str, str],
               accuracy_threshold: Optional[Any] = None) -> ModelGate:
  """`fingerprints` (code_fingerprints()) go into each push's evaluation record;
  `accuracy_threshold` (a RuntimeParameter) overrides the config's at run time."""
  evaluator = ServedBaselineEvaluator(
      examples=examples,
      model=model,
      eval_config=eval_config(params.accuracy_threshold),
      example_splits=[features.TEST_SPLIT, features.HOLDOUT_SPLIT],
      serving_dir=locations.serving,
      accuracy_threshold=accuracy_threshold).with_id(ids.EVALUATOR)

  pusher = atomic_pusher.AtomicPusher(
      model=model,
      model_blessing=evaluator.outputs['blessing'],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=locations.serving)),
      record={'pipeline_name': params.pipeline_name, 'model_name': params.model_name,
              'code_fingerprint': fingerprints,
              'training': dataclasses.asdict(params.training)}).with_id(ids.PUSHER)
  return ModelGate(evaluator, pusher)


def create_pipeline(
    params: PipelineParams,
    locations: Locations,
    beam_pipeline_args: Optional[Sequence[str]] = None,
    example_gen: Optional[base_node.BaseNode] = None,
    run_values: RunValues = RunValues(),
) -> Pipeline:
  """The whole DAG. `beam_pipeline_args` default to the parameters' local Beam settings.
  `run_values` (runtime_parameters(): Kubeflow) bind epochs, learning rate, accuracy
  threshold and data location per run; unset, the config's values are fixed in the DAG.
  `example_gen` replaces
  the MNIST ExampleGen by any node with an `examples` output (the reliability tests feed
  hand-written bad examples through the real DAG that way)."""
  example_gen = example_gen or MnistExampleGen(
      data_dir=locations.data if run_values.data is None else run_values.data,
      eval_size=params.eval_size,
      limit_train=params.limit_train, limit_test=params.limit_test,
      span_window=params.span_window, holdout_fraction=params.holdout_fraction,
      code_fingerprint=code_fingerprint(EXAMPLE_GEN_MODULE)).with_id(ids.EXAMPLE_GEN)
  examples = example_gen.outputs['examples']

  validation = data_validation(params, locations, examples)
  fingerprints = code_fingerprints()
  schema = validation.schema_gen.outputs['schema']

  transform = Transform(
      examples=examples,
      schema=schema,
      preprocessing_fn=PREPROCESSING_FN,
      splits_config=transform_pb2.SplitsConfig(analyze=[features.TRAIN_SPLIT]),
      materialize=False,  # the Trainer applies the transform graph as it reads (trainer/data.py)
      custom_config={'code_fingerprint': fingerprints['transform']},
  ).with_id(ids.TRANSFORM)
  transform.add_upstream_node(validation.anomalies_gate)  # nothing trains on stopped data
  transform.add_upstream_node(validation.drift_check)

  trainer = RuntimeTrainer(
      run_fn=RUN_FN,
      examples=examples,
      transform_graph=transform.outputs['transform_graph'],
      schema=schema,
      train_args=trainer_pb2.TrainArgs(splits=[features.TRAIN_SPLIT]),
      eval_args=trainer_pb2.EvalArgs(splits=[features.EVAL_SPLIT]),
      custom_config={'training': dataclasses.asdict(params.training),
                     'code_fingerprint': fingerprints['trainer'],
                     'served_model_dir': locations.serving,
                     'model_name': params.model_name},
      epochs=run_values.epochs, learning_rate=run_values.learning_rate).with_id(ids.TRAINER)

  gate = model_gate(params, locations, examples, trainer.outputs['model'], fingerprints,
                    run_values.accuracy_threshold)
  return Pipeline(
      pipeline_name=params.pipeline_name,
      pipeline_root=locations.pipeline_root,
      components=[example_gen, *validation, transform, trainer, *gate],
      enable_cache=params.enable_cache,
      metadata_connection_config=(
          metadata.sqlite_metadata_connection_config(locations.metadata)
          if locations.metadata else None),
      beam_pipeline_args=list(beam_pipeline_args if beam_pipeline_args is not None
                              else params.beam_pipeline_args()))
