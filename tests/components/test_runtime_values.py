"""The values a Kubeflow run sets (epochs, learning rate, accuracy threshold) as the
executors apply them: the Trainer's custom_config, the Evaluator's eval_config, and the
record each push carries."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from tfx.types import standard_artifacts

from components import atomic_pusher, runtime_trainer, served_baseline
from pipeline import pipeline
from trainer.hparams import TrainingConfig


def trainer_properties(**runtime) -> dict:
  custom_config = {'training': {'epochs': 24, 'learning_rate': 3e-3, 'batch_size': 64}}
  return {'custom_config': json.dumps(custom_config), **runtime}


def test_runtime_values_replace_the_compiled_ones_and_nothing_else():
  training = runtime_trainer.effective_training(
      trainer_properties(epochs=5.0, learning_rate=1e-3))
  assert (training['epochs'], training['learning_rate'], training['batch_size']) == (
      5, 1e-3, 64)
  assert type(training['epochs']) is int
  unset = runtime_trainer.effective_training(trainer_properties(epochs=None))
  assert unset == {**vars(TrainingConfig()), 'batch_size': 64}


@pytest.mark.parametrize('runtime, message', [
    ({'epochs': 2.5}, 'epochs must be a whole number'),
    ({'epochs': 0}, 'epochs and batch_size must be >= 1'),
])
def test_unusable_runtime_values_are_refused(runtime, message):
  with pytest.raises(ValueError, match=message):
    runtime_trainer.effective_training(trainer_properties(**runtime))


def eval_config_json(threshold: float = 0.99) -> str:
  return json_format.MessageToJson(pipeline.eval_config(threshold))


def gate_bounds(config_json: str) -> list:
  config = json.loads(config_json)
  return [t['threshold']['valueThreshold']['lowerBound']
          for spec in config['metricsSpecs'] for metric in spec['metrics']
          for t in metric.get('perSliceThresholds', [])]


def test_the_threshold_replaces_the_gates_bound_only():
  before = json.loads(eval_config_json())
  after = served_baseline.with_accuracy_threshold(eval_config_json(), 0.9)
  assert gate_bounds(after) == [0.9]
  assert json.loads(after) == json.loads(eval_config_json(0.9))  # as if compiled with it
  assert before != json.loads(after)


@pytest.mark.parametrize('threshold, config, message', [
    (1.5, None, 'accuracy_threshold must be within'),
    (0.9, '{"metricsSpecs": [{"metrics": [{"className": "ExampleCount"}]}]}',
     'no value threshold on SparseCategoricalAccuracy'),
])
def test_a_threshold_that_cannot_apply_is_an_error(threshold, config, message):
  with pytest.raises(ValueError, match=message):
    served_baseline.with_accuracy_threshold(config or eval_config_json(), threshold)


def test_the_push_record_states_what_the_model_was_trained_with():
  model = standard_artifacts.Model()
  model.set_string_custom_property(runtime_trainer.TRAINING_PROPERTY, json.dumps({'epochs': 5}))
  assert atomic_pusher.trained_with({'model': [model]}) == {'epochs': 5}
  assert atomic_pusher.trained_with({'model': [standard_artifacts.Model()]}) is None
