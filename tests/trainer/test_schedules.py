"""Each learning-rate schedule yields the expected rate at chosen steps."""

import math

import pytest
import tf_keras as keras

from trainer.hparams import TrainingConfig
from trainer import schedules

STEPS_PER_EPOCH = 100


def _lr(cfg, step):
  schedule = schedules.learning_rate(cfg, STEPS_PER_EPOCH)
  return schedule if isinstance(schedule, float) else float(schedule(step))


def test_constant_and_plateau_start_at_the_configured_rate():
  for name in ('constant', 'plateau'):
    cfg = TrainingConfig(lr_schedule=name, learning_rate=0.01, epochs=4)
    assert _lr(cfg, 0) == _lr(cfg, 399) == 0.01


def test_exponential_decays_per_epoch():
  cfg = TrainingConfig(lr_schedule='exponential', learning_rate=0.01, epochs=4)
  assert _lr(cfg, 0) == pytest.approx(0.01)
  assert _lr(cfg, 200) == pytest.approx(0.01 * schedules.EXPONENTIAL_DECAY_PER_EPOCH ** 2)


def test_cosine_warms_up_linearly_then_decays_to_zero():
  cfg = TrainingConfig(lr_schedule='cosine', learning_rate=0.01, warmup_epochs=1, epochs=5)
  assert _lr(cfg, 0) == pytest.approx(0.0)
  assert _lr(cfg, 50) == pytest.approx(0.005)
  assert _lr(cfg, 100) == pytest.approx(0.01)
  assert _lr(cfg, 300) == pytest.approx(0.005, rel=1e-3)   # halfway through the decay
  assert _lr(cfg, 500) == pytest.approx(0.0, abs=1e-9)


def test_onecycle_rises_to_the_peak_then_anneals():
  cfg = TrainingConfig(lr_schedule='onecycle', learning_rate=0.01, epochs=10)
  peak_step = int(1000 * schedules.ONECYCLE_WARMUP_FRACTION)
  assert _lr(cfg, 0) == pytest.approx(0.01 / schedules.ONECYCLE_START_DIVISOR)
  assert _lr(cfg, peak_step) == pytest.approx(0.01)
  assert _lr(cfg, 1000) == pytest.approx(0.01 / schedules.ONECYCLE_END_DIVISOR)
  assert _lr(cfg, 650) < _lr(cfg, 400) < 0.01


def test_optimizers_and_logged_rate():
  cfg = TrainingConfig(optimizer='adamw', weight_decay=1e-3, learning_rate=0.02,
                       lr_schedule='constant')
  optimizer = schedules.make_optimizer(cfg, STEPS_PER_EPOCH)
  assert isinstance(optimizer, keras.optimizers.AdamW)
  assert schedules.current_learning_rate(optimizer) == pytest.approx(0.02)
  assert isinstance(schedules.make_optimizer(TrainingConfig(), STEPS_PER_EPOCH),
                    keras.optimizers.Adam)
  assert math.isfinite(schedules.current_learning_rate(
      schedules.make_optimizer(TrainingConfig(lr_schedule='onecycle'), STEPS_PER_EPOCH)))
