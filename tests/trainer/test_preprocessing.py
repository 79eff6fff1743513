"""`preprocessing_fn` through tensorflow-transform's real Beam implementation."""

import numpy as np

from tests import model_factory
from trainer import features


def test_pixels_scaled_to_unit_float_images_and_labels_kept(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
  images[0] = 0
  images[1] = 255
  labels = np.arange(8) % 10
  arrays = model_factory.transform(images, labels, tmp_path / 'transform')
  assert arrays.images.shape == (8, 28, 28, 1) and arrays.images.dtype == np.float32
  np.testing.assert_allclose(arrays.images[..., 0], images / 255.0, rtol=1e-6)
  assert arrays.images[0].max() == 0.0 and arrays.images[1].min() == 1.0
  assert arrays.labels.tolist() == labels.tolist()
  assert (tmp_path / 'transform' / 'transform_fn' / 'saved_model.pb').exists()
  assert features.IMAGE_KEY == 'image'
