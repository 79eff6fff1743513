"""TFDV's drift comparators against the bounds kept in pipeline/schema/drift.pbtxt, on real
MNIST: a random sample stays inside, inverted scans and a one-digit span do not."""

import numpy as np
import pytest

from components import drift_check
from pipeline import configs
from trainer import idx

BOUNDS = configs.DRIFT_BOUNDS.read_text()


@pytest.fixture(scope='module')
def mnist(mnist_dir):
  train = idx.load_source(mnist_dir, 'train')
  order = np.random.default_rng(0).permutation(len(train.labels))
  sample, rest = order[:5000], order[5000:]
  base = drift_check.image_statistics(train.images[rest], train.labels[rest])
  return train, sample, base


def test_a_random_sample_of_the_same_data_is_within_the_bounds(mnist):
  train, sample, base = mnist
  span = drift_check.image_statistics(train.images[sample], train.labels[sample])
  assert drift_check.drift_problems(base, span, 1, BOUNDS) == []


def test_inverted_scans_drift_on_both_pixel_statistics(mnist):
  train, sample, base = mnist
  span = drift_check.image_statistics(255 - train.images[sample], train.labels[sample])
  problems = drift_check.drift_problems(base, span, 2, BOUNDS)
  assert len(problems) == 2
  assert problems[0].startswith('span 2: ink_fraction: ')
  assert problems[1].startswith('span 2: mean_pixel: ')
  assert all('Jensen-Shannon divergence' in p and 'threshold 0.1' in p for p in problems)


def test_a_span_of_one_digit_drifts_on_the_label(mnist):
  train, _, base = mnist
  sevens = np.flatnonzero(train.labels == 7)[:2000]
  span = drift_check.image_statistics(train.images[sevens], train.labels[sevens])
  problems = drift_check.drift_problems(base, span, 3, BOUNDS)
  label = [p for p in problems if p.startswith('span 3: label: ')]
  assert label and 'Linfty distance' in label[0] and 'threshold 0.1' in label[0]
