"""TFX's Trainer with `epochs` and `learning_rate` as execution parameters of their own.

The training hyperparameters reach `run_fn` as one JSON dict (`custom_config['training']`),
and TFX's Kubeflow v2 compiler turns a `RuntimeParameter` into a pipeline parameter only
when it is a whole execution property: one inside `custom_config` would be serialized
into the JSON as an object, not bound at run time. So the two values a schedule may change
are properties of their own; when set, the executor writes them into
`custom_config['training']` before TFX's executor calls `run_fn`. When unset (the local
runner), the Trainer is TFX's own: `custom_config` alone says how to train.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Union

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import data_types
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from trainer.hparams import TrainingConfig

TRAINING_KEY = 'training'        # custom_config's TrainingConfig dict
EPOCHS_KEY = 'epochs'
LEARNING_RATE_KEY = 'learning_rate'
# The model artifact's record of the config it was trained with (the Pusher's record).
TRAINING_PROPERTY = 'training'
RUNTIME_FIELDS = {EPOCHS_KEY: int, LEARNING_RATE_KEY: float}  # TrainingConfig field: type


def _custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  return json_utils.loads(
      exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or 'null') or {}


def effective_training(exec_properties: Dict[str, Any],
                       custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """custom_config['training'] with the set runtime fields written in, checked by
  TrainingConfig (KFP sends numbers as doubles: an integral 5.0 is 5 epochs).
  `custom_config`: the parsed exec property, if the caller has it already."""
  if custom_config is None:
    custom_config = _custom_config(exec_properties)
  training = dict(custom_config.get(TRAINING_KEY) or {})
  for name, kind in RUNTIME_FIELDS.items():
    value = exec_properties.get(name)
    if value is None:
      continue
    if kind is int and float(value) != int(float(value)):
      raise ValueError(f'Trainer: {name} must be a whole number, found {value!r}')
    training[name] = kind(float(value)) if kind is int else kind(value)
  return dataclasses.asdict(TrainingConfig(**training))


class Executor(trainer_executor.GenericExecutor):
  """TFX's generic Trainer executor, with the runtime fields applied to custom_config."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    custom_config = _custom_config(exec_properties)
    training = effective_training(exec_properties, custom_config)
    if any(exec_properties.get(name) is not None for name in RUNTIME_FIELDS):
      exec_properties = {**exec_properties, standard_component_specs.CUSTOM_CONFIG_KEY:
                         json_utils.dumps({**custom_config, TRAINING_KEY: training})}
    super().Do(input_dict, output_dict, exec_properties)
    model = artifact_utils.get_single_instance(output_dict[standard_component_specs.MODEL_KEY])
    model.set_string_custom_property(TRAINING_PROPERTY, json.dumps(training, sort_keys=True))


class RuntimeTrainerSpec(standard_component_specs.TrainerSpec):
  PARAMETERS = {
      **standard_component_specs.TrainerSpec.PARAMETERS,
      EPOCHS_KEY: ExecutionParameter(type=int, optional=True),
      LEARNING_RATE_KEY: ExecutionParameter(type=float, optional=True),
  }


class RuntimeTrainer(base_component.BaseComponent):
  """`Trainer(run_fn=..., examples, transform_graph, schema, train_args, eval_args,
  custom_config)` whose `epochs` and `learning_rate` (ints/floats or RuntimeParameters)
  override `custom_config['training']`'s when given."""

  SPEC_CLASS = RuntimeTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, run_fn: str, examples: types.BaseChannel,
               transform_graph: types.BaseChannel, schema: types.BaseChannel,
               train_args: trainer_pb2.TrainArgs, eval_args: trainer_pb2.EvalArgs,
               custom_config: Dict[str, Any],
               epochs: Optional[Union[int, data_types.RuntimeParameter]] = None,
               learning_rate: Optional[Union[float, data_types.RuntimeParameter]] = None):
    spec = RuntimeTrainerSpec(
        examples=examples, transform_graph=transform_graph, schema=schema,
        train_args=train_args, eval_args=eval_args, run_fn=run_fn,
        custom_config=json_utils.dumps(custom_config),
        epochs=epochs, learning_rate=learning_rate,
        model=types.Channel(type=standard_artifacts.Model),
        model_run=types.Channel(type=standard_artifacts.ModelRun))
    super().__init__(spec=spec)
