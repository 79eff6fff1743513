"""The Trainer's `run_fn`: read examples through Transform's graph, train, export."""

from __future__ import annotations

import math
import time
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow_transform as tft
import tf_keras as keras
from tfx.components.trainer.fn_args_utils import FnArgs

from trainer.hparams import TrainingConfig
from trainer import data, distribution, export, features, model, schedules, warm_start

ACCURACY_METRIC = 'accuracy'
# custom_config key: the served model's base path, `<serving>/<model name>` (warm starts).
SERVED_MODEL_DIR_KEY = 'served_model_dir'
WARMUP_IMAGES = 32  # eval images recorded as TF Serving's warm-up requests


def compile_model(cfg: TrainingConfig, steps_per_epoch: int,
                  initial_weights: Optional[List[np.ndarray]] = None) -> keras.Model:
  """Initial weights are set before compiling: the optimizer starts fresh."""
  net = model.build_model(cfg)
  if initial_weights is not None:
    net.set_weights(initial_weights)
  net.compile(
      optimizer=schedules.make_optimizer(cfg, steps_per_epoch),
      loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
      metrics=[keras.metrics.CategoricalAccuracy(name=ACCURACY_METRIC)])
  return net


def callbacks(cfg: TrainingConfig, log_dir: str) -> list:
  result = [schedules.LearningRateLogger()]
  if cfg.lr_schedule == 'plateau':
    result.append(keras.callbacks.ReduceLROnPlateau(monitor='val_loss', factor=0.5,
                                                    patience=1, min_lr=1e-6))
  if cfg.early_stopping_patience:
    result.append(keras.callbacks.EarlyStopping(
        monitor=f'val_{ACCURACY_METRIC}', mode='max',
        patience=cfg.early_stopping_patience, restore_best_weights=True))
  result.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq='epoch'))
  return result


def train(cfg: TrainingConfig, train_arrays: data.Arrays, eval_arrays: data.Arrays,
          log_dir: str, initial_weights: Optional[List[np.ndarray]] = None) -> keras.Model:
  """Trains under the chosen strategy; shared by `run_fn` and the benchmarks."""
  keras.utils.set_random_seed(cfg.seed)
  strategy = distribution.configure(cfg)
  batch_size = cfg.batch_size * strategy.num_replicas_in_sync
  steps_per_epoch = math.ceil(len(train_arrays.labels) / batch_size)
  with strategy.scope():
    net = compile_model(cfg, steps_per_epoch, initial_weights)
  net.fit(data.make_dataset(train_arrays, batch_size, training=True, seed=cfg.seed),
          validation_data=data.make_dataset(eval_arrays, batch_size, training=False,
                                            seed=cfg.seed),
          epochs=cfg.epochs, callbacks=callbacks(cfg, log_dir), verbose=2)
  return net


def train_or_warm_start(cfg: TrainingConfig, train_arrays: data.Arrays,
                        eval_arrays: data.Arrays, log_dir: str,
                        served_model_dir: Optional[str]) -> keras.Model:
  """`train`; with `cfg.warm_start`, a fine-tuning of the served model's weights instead
  (`cfg.fine_tuning()`) when the served network is the one `cfg` builds."""
  weights = warm_start.served_weights(cfg, served_model_dir) if cfg.warm_start else None
  if weights is None:
    return train(cfg, train_arrays, eval_arrays, log_dir)
  return train(cfg.fine_tuning(), train_arrays, eval_arrays, log_dir, initial_weights=weights)


def run_fn(fn_args: FnArgs) -> None:
  cfg = TrainingConfig(**fn_args.custom_config['training'])
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  train_arrays = data.read_transformed(fn_args.train_files, fn_args.data_accessor,
                                       tf_transform_output)
  eval_arrays = data.read_transformed(fn_args.eval_files, fn_args.data_accessor,
                                      tf_transform_output)
  logging.info('Trainer: %d train and %d eval examples, config %s',
               len(train_arrays.labels), len(eval_arrays.labels), cfg)
  net = train_or_warm_start(cfg, train_arrays, eval_arrays, fn_args.model_run_dir,
                            fn_args.custom_config.get(SERVED_MODEL_DIR_KEY))
  start = time.monotonic()
  # Warm-up requests from held-out images, as raw pixels (what clients send).
  warmup = np.round(eval_arrays.images[:WARMUP_IMAGES, ..., 0] * features.PIXEL_MAX)
  export.export_serving_model(net, cfg, tf_transform_output, fn_args.serving_model_dir,
                              warmup.astype(np.uint8),
                              fn_args.custom_config.get('model_name', 'mnist'))
  logging.info('Trainer: exported the serving model in %.0f s', time.monotonic() - start)
