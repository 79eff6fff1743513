"""An Evaluator whose baseline is the model being served now, read from the serving location.

TFX's usual baseline is the last model blessed in this machine's ML Metadata, found by a
resolver node: a model that was blessed but never pushed, or a served version pushed by
another machine, would be the wrong yardstick, and open-source Kubeflow cannot run
resolver nodes at all. Here the baseline is what TF Serving serves: the newest complete
version under the Pusher's destination (trainer/serving_layout.py's rule), evaluated side
by side with the candidate on the same examples in the same run. Nothing served yet: the
absolute bound alone gates (TFX's rubber stamp).

Which version that is belongs in the cache key: a driver looks it up before TFX's cache
check (where the orchestrator runs drivers, i.e. locally), so a newer served model makes
the Evaluator run again instead of reusing a verdict against an older one. Where no
driver runs (Kubeflow), the executor looks it up itself and the task is not cached.

The blessing records the verdict's inputs for the summary, the Pusher and `lineage`:
`baseline_version`, `candidate_accuracy`, `baseline_accuracy`, `holdout_accuracy` (per
span) and `spans` (the spans the candidate's examples held).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Union

from absl import logging
from google.protobuf import json_format
import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, base_driver, executor_spec
from tfx.dsl.io import fileio
from tfx.orchestration import data_types
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.orchestration.portable import data_types as portable_data_types
from tfx.proto.orchestration import driver_output_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils, json_utils

from components.mnist_example_gen.executor import SPANS_PROPERTY
from trainer import serving_layout as layout
from trainer import features

SERVING_DIR_KEY = 'serving_dir'
BASELINE_VERSION_KEY = 'baseline_version'   # '' = nothing served
# The gate's absolute bound, when given apart from eval_config (a pipeline parameter on
# Kubeflow: TFX's compiler binds whole execution properties only, not a field of a proto).
ACCURACY_THRESHOLD_KEY = 'accuracy_threshold'
GATE_METRIC = 'SparseCategoricalAccuracy'   # the metric whose value bound is the gate
ACCURACY = 'sparse_categorical_accuracy'
CANDIDATE, BASELINE = 'candidate', 'baseline'  # TFMA's model names with a baseline


def _listdir(path: str) -> List[str]:
  try:
    return fileio.listdir(path)
  except fileio.NotFoundError as e:  # object stores' "no such folder"
    raise FileNotFoundError(path) from e


def served_version(serving_dir: str) -> Optional[int]:
  """The version TF Serving serves from `serving_dir` (local path or URI), if any."""
  return max(layout.versions(serving_dir, _listdir, fileio.exists), default=None)


class ServedBaselineEvaluatorSpec(standard_component_specs.EvaluatorSpec):
  PARAMETERS = {
      **standard_component_specs.EvaluatorSpec.PARAMETERS,
      SERVING_DIR_KEY: ExecutionParameter(type=str),
      BASELINE_VERSION_KEY: ExecutionParameter(type=str, optional=True),
      ACCURACY_THRESHOLD_KEY: ExecutionParameter(type=float, optional=True),
  }


class Driver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
  """Puts the served version into the execution's parameters, before the cache check."""

  def __init__(self, metadata_handle):
    base_driver.BaseDriver.__init__(self, metadata_handle)
    ir_base_driver.BaseDriver.__init__(self, metadata_handle)

  def run(self, execution_info: portable_data_types.ExecutionInfo
          ) -> driver_output_pb2.DriverOutput:
    version = served_version(execution_info.exec_properties[SERVING_DIR_KEY])
    result = driver_output_pb2.DriverOutput()
    result.exec_properties[BASELINE_VERSION_KEY].string_value = (
        '' if version is None else str(version))
    return result


def with_accuracy_threshold(eval_config_json: str, threshold: float) -> str:
  """The eval_config (TFX's JSON form) with every value bound of GATE_METRIC's
  thresholds set to `threshold`; an eval_config without one cannot take it."""
  if not 0 <= threshold <= 1:
    raise ValueError(f'Evaluator: {ACCURACY_THRESHOLD_KEY} must be within [0, 1], found '
                     f'{threshold!r}')
  config = tfma.EvalConfig()
  json_format.Parse(eval_config_json, config)
  bounds = [t.value_threshold for spec in config.metrics_specs for metric in spec.metrics
            if metric.class_name == GATE_METRIC
            for t in ([metric.threshold] if metric.HasField('threshold') else []) +
            [p.threshold for p in metric.per_slice_thresholds]
            if t.HasField('value_threshold')]
  if not bounds:
    raise ValueError(f'Evaluator: {ACCURACY_THRESHOLD_KEY} given, but eval_config has no '
                     f'value threshold on {GATE_METRIC} to apply it to')
  for bound in bounds:
    bound.lower_bound.value = threshold
  return json_format.MessageToJson(config, sort_keys=True)


def gate_slice_key() -> tfma.slicer.SingleSliceSpec:
  return tfma.slicer.SingleSliceSpec(features=[(features.SPAN_KEY, features.BASE_SPAN)])


class Executor(evaluator_executor.Executor):
  """TFX's Evaluator with the served model as the baseline."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    serving_dir = exec_properties[SERVING_DIR_KEY]
    threshold = exec_properties.get(ACCURACY_THRESHOLD_KEY)
    if threshold is not None:
      exec_properties = {**exec_properties, standard_component_specs.EVAL_CONFIG_KEY:
                         with_accuracy_threshold(
                             exec_properties[standard_component_specs.EVAL_CONFIG_KEY],
                             float(threshold))}
      logging.info('Evaluator: accuracy threshold %s', threshold)
    version = exec_properties.get(BASELINE_VERSION_KEY)
    if version is None:  # no driver ran (Kubeflow): look it up now
      found = served_version(serving_dir)
      version = '' if found is None else str(found)
    input_dict = dict(input_dict)
    if version:
      baseline = standard_artifacts.Model()
      baseline.uri = f'{self._get_tmp_dir().rstrip("/")}/served-{version}'
      # The Evaluator reads a Model artifact's SavedModel from <uri>/Format-Serving.
      io_utils.copy_dir(f'{serving_dir.rstrip("/")}/{version}',
                        f'{baseline.uri}/Format-Serving')
      input_dict[standard_component_specs.BASELINE_MODEL_KEY] = [baseline]
      logging.info('Evaluator: baseline is served version %s of %s', version, serving_dir)
    else:
      input_dict.pop(standard_component_specs.BASELINE_MODEL_KEY, None)
      logging.info('Evaluator: nothing served under %s; the absolute bound alone gates',
                   serving_dir)
    super().Do(input_dict, output_dict, exec_properties)
    self._record(input_dict, output_dict, version)
    if version:
      self._name_the_served_baseline(output_dict, f'{serving_dir.rstrip("/")}/{version}')

  @staticmethod
  def _name_the_served_baseline(output_dict: Dict[str, List[types.Artifact]],
                                served_uri: str) -> None:
    """TFX's Evaluator names the baseline on the blessing by ML Metadata id and URI; the
    served copy is no MLMD artifact (id 0) in a temporary folder. The id goes: on
    Kubeflow, TFX's entrypoint maps blessing ids to MLMD names and fails on one it was
    not given (KeyError: 0), so every run after the first push would die there. The URI
    becomes the served version's folder; `baseline_version` names it too."""
    blessing = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.BLESSING_KEY])
    properties = blessing.mlmd_artifact.custom_properties
    if evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY in properties:
      del properties[evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY]
    blessing.set_string_custom_property(
        evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, served_uri)

  @staticmethod
  def _record(input_dict: Dict[str, List[types.Artifact]],
              output_dict: Dict[str, List[types.Artifact]], version: str) -> None:
    evaluation = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EVALUATION_KEY])
    blessing = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.BLESSING_KEY])
    examples = artifact_utils.get_single_instance(
        input_dict[standard_component_specs.EXAMPLES_KEY])
    accuracy = slice_accuracies(evaluation.uri)
    gate = accuracy.get((CANDIDATE, features.BASE_SPAN))
    blessing.set_string_custom_property(BASELINE_VERSION_KEY, version)
    blessing.set_string_custom_property(
        SPANS_PROPERTY, examples.get_string_custom_property(SPANS_PROPERTY) or '[]')
    if gate is not None:
      blessing.set_float_custom_property('candidate_accuracy', gate)
    if version and (BASELINE, features.BASE_SPAN) in accuracy:
      blessing.set_float_custom_property('baseline_accuracy',
                                         accuracy[(BASELINE, features.BASE_SPAN)])
    holdout = {str(span): value for (model, span), value in accuracy.items()
               if model == CANDIDATE and span != features.BASE_SPAN}
    blessing.set_string_custom_property('holdout_accuracy', json.dumps(holdout))


def slice_accuracies(evaluation_uri: str) -> Dict[tuple, float]:
  """{(model name, span): test accuracy} of the `span` slices TFMA wrote."""
  result = {}
  for sliced in tfma.load_metrics(evaluation_uri):
    key = dict((k, v) for k, v in tfma.slicer.deserialize_slice_key(sliced.slice_key))
    if set(key) != {features.SPAN_KEY}:
      continue
    for keys_and_values in sliced.metric_keys_and_values:
      if keys_and_values.key.name == ACCURACY and not keys_and_values.key.is_diff:
        model = keys_and_values.key.model_name or CANDIDATE
        result[(model, int(key[features.SPAN_KEY]))] = keys_and_values.value.double_value.value
  return result


class ServedBaselineEvaluator(base_beam_component.BaseBeamComponent):
  """`Evaluator(examples, model, eval_config, example_splits)` gating against the model
  served from `serving_dir` (the Pusher's destination)."""

  SPEC_CLASS = ServedBaselineEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
  DRIVER_CLASS = Driver

  def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
               eval_config: tfma.EvalConfig, example_splits: List[str], serving_dir: str,
               accuracy_threshold: Optional[Union[float, data_types.RuntimeParameter]] = None):
    """`accuracy_threshold`, when given, replaces eval_config's bound on GATE_METRIC at
    run time (see with_accuracy_threshold)."""
    spec = ServedBaselineEvaluatorSpec(
        examples=examples,
        model=model,
        eval_config=eval_config,
        example_splits=json_utils.dumps(example_splits),
        fairness_indicator_thresholds=json_utils.dumps(None),
        serving_dir=serving_dir,
        accuracy_threshold=accuracy_threshold,
        evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
        blessing=types.Channel(type=standard_artifacts.ModelBlessing))
    super().__init__(spec=spec)
