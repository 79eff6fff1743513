"""Learning-rate schedules and the optimizer built on them, chosen by `TrainingConfig`."""

from __future__ import annotations

import math
from typing import Union

import tensorflow as tf
import tf_keras as keras

from trainer.hparams import TrainingConfig

EXPONENTIAL_DECAY_PER_EPOCH = 0.8
ONECYCLE_WARMUP_FRACTION = 0.3
ONECYCLE_START_DIVISOR = 25.0     # starts at peak / 25, as in fast.ai's one-cycle
ONECYCLE_END_DIVISOR = 1e4        # ends at peak / 1e4


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from peak/25 to peak, then cosine annealing to peak/1e4."""

  def __init__(self, peak: float, total_steps: int,
               warmup_fraction: float = ONECYCLE_WARMUP_FRACTION):
    self.peak = peak
    self.total_steps = total_steps
    self.warmup_fraction = warmup_fraction

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = max(1.0, self.total_steps * self.warmup_fraction)
    start = self.peak / ONECYCLE_START_DIVISOR
    end = self.peak / ONECYCLE_END_DIVISOR
    rising = start + (self.peak - start) * step / warmup
    progress = tf.clip_by_value((step - warmup) / max(1.0, self.total_steps - warmup), 0., 1.)
    falling = end + (self.peak - end) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    return tf.where(step < warmup, rising, falling)

  def get_config(self):
    return {'peak': self.peak, 'total_steps': self.total_steps,
            'warmup_fraction': self.warmup_fraction}


def learning_rate(cfg: TrainingConfig, steps_per_epoch: int
                  ) -> Union[float, keras.optimizers.schedules.LearningRateSchedule]:
  """The schedule `cfg.lr_schedule` names, peaking at `cfg.learning_rate`."""
  total_steps = max(1, cfg.epochs * steps_per_epoch)
  if cfg.lr_schedule in ('constant', 'plateau'):  # plateau: a callback lowers it
    return cfg.learning_rate
  if cfg.lr_schedule == 'exponential':
    return keras.optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, decay_steps=steps_per_epoch,
        decay_rate=EXPONENTIAL_DECAY_PER_EPOCH)
  if cfg.lr_schedule == 'onecycle':
    return OneCycle(cfg.learning_rate, total_steps)
  warmup_steps = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0 if warmup_steps else cfg.learning_rate,
      decay_steps=total_steps - warmup_steps, alpha=0.0,
      warmup_target=cfg.learning_rate if warmup_steps else None,
      warmup_steps=warmup_steps)


def make_optimizer(cfg: TrainingConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
  lr = learning_rate(cfg, steps_per_epoch)
  if cfg.optimizer == 'adamw':
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
  return keras.optimizers.Adam(learning_rate=lr)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
  lr = optimizer.learning_rate
  if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
    return float(lr(optimizer.iterations))
  return float(keras.backend.get_value(lr))


class LearningRateLogger(keras.callbacks.Callback):
  """Puts the epoch's learning rate into the logs, so TensorBoard and the console show it."""

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs['learning_rate'] = current_learning_rate(self.model.optimizer)
