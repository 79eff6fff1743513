"""Model builders: shapes and parameter counts as documented in trainer/model.py."""

import numpy as np
import pytest

from trainer.hparams import TrainingConfig
from trainer import model


@pytest.mark.parametrize('architecture,batch_norm,params', [
    ('cnn', True, 468778), ('cnn', False, 467818),
    ('mlp', True, 538122), ('mlp', False, 535818),
])
def test_shapes_and_parameter_counts(architecture, batch_norm, params):
  net = model.build_model(TrainingConfig(architecture=architecture, batch_norm=batch_norm))
  assert net.input_shape == (None, 28, 28, 1)
  assert net.output_shape == (None, 10)
  assert net.count_params() == params
  has_bn = any('batch_normalization' in layer.name for layer in net.layers)
  assert has_bn == batch_norm


def test_outputs_are_probabilities_and_dropout_is_inference_free():
  net = model.build_model(TrainingConfig(dropout=0.5))
  x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
  first = net(x, training=False).numpy()
  np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(first, net(x, training=False).numpy())
  assert not np.array_equal(first, net(x, training=True).numpy())


def test_unknown_architecture_is_rejected():
  with pytest.raises(ValueError, match="architecture: expected one of .* found 'resnet'"):
    TrainingConfig(architecture='resnet')


def test_augmentation_only_acts_in_training():
  net = model.build_model(TrainingConfig(augment=True, dropout=0.0))
  augment = net.get_layer('augmentation')
  x = np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32)
  np.testing.assert_array_equal(augment(x, training=False).numpy(), x)
  assert not np.allclose(augment(x, training=True).numpy(), x)
  np.testing.assert_array_equal(net(x, training=False).numpy(), net(x, training=False).numpy())
