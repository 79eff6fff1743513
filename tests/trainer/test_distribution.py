"""Strategy and precision selection, exercised on CPU with simulated device lists."""

import tensorflow as tf

from trainer.hparams import TrainingConfig
from trainer import distribution


def test_cpu_gets_the_default_strategy_and_float32():
  cfg = TrainingConfig()
  assert not isinstance(distribution.choose_strategy(cfg, []), tf.distribute.MirroredStrategy)
  assert distribution.precision_policy(cfg, []) == 'float32'


def test_gpus_get_mirrored_and_mixed_precision():
  cfg = TrainingConfig()
  assert distribution.precision_policy(cfg, ['/device:GPU:0']) == 'mixed_float16'
  # MirroredStrategy over the CPU stands in for the listed GPUs' code path.
  forced = distribution.choose_strategy(TrainingConfig(distribution='mirrored'), [])
  assert isinstance(forced, tf.distribute.MirroredStrategy)
  assert forced.num_replicas_in_sync == 1


def test_config_can_force_either_way():
  assert distribution.precision_policy(TrainingConfig(mixed_precision='on'), []) == 'mixed_float16'
  assert distribution.precision_policy(TrainingConfig(mixed_precision='off'),
                                       ['/device:GPU:0']) == 'float32'
  default = distribution.choose_strategy(TrainingConfig(distribution='default'), ['/gpu:0'])
  assert not isinstance(default, tf.distribute.MirroredStrategy)
