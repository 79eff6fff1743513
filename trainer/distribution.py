"""Picks the tf.distribute strategy and precision policy for the devices present."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from trainer.hparams import TrainingConfig


def choose_strategy(cfg: TrainingConfig, gpus: Sequence[str]) -> tf.distribute.Strategy:
  """MirroredStrategy over all visible GPUs; the default strategy on CPU."""
  use_mirrored = cfg.distribution == 'mirrored' or (cfg.distribution == 'auto' and gpus)
  if use_mirrored:
    return tf.distribute.MirroredStrategy(devices=list(gpus) or None)
  return tf.distribute.get_strategy()


def precision_policy(cfg: TrainingConfig, gpus: Sequence[str]) -> str:
  if cfg.mixed_precision == 'on' or (cfg.mixed_precision == 'auto' and gpus):
    return 'mixed_float16'
  return 'float32'


def configure(cfg: TrainingConfig) -> tf.distribute.Strategy:
  """Sets the global precision policy and returns the strategy to build the model under."""
  gpus = [d.name for d in tf.config.list_logical_devices('GPU')]
  keras.mixed_precision.set_global_policy(precision_policy(cfg, gpus))
  return choose_strategy(cfg, gpus)
