"""The REST client, its CLI, and the MNIST-way image conversion."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from trainer import idx
from serving import process
from trainer import mnist_image
from serving.client import ServingClient, ServingClientError
from tests.serving.conftest import MNIST_DIR, reference_predict


def photo_of(digit: np.ndarray, size=(400, 300), scale: int = 7, at=(150, 30),
             dark_on_light: bool = True, mode: str = 'RGB') -> Image.Image:
  """An MNIST digit as a user would photograph it: big, off-centre, ink on paper."""
  ink = 255 - digit if dark_on_light else digit
  big = Image.fromarray(ink).resize((28 * scale, 28 * scale), Image.BICUBIC)
  canvas = Image.new('L', size, 255 if dark_on_light else 0)
  canvas.paste(big, at)
  return canvas.convert(mode)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.corrcoef(a.reshape(-1).astype(float), b.reshape(-1).astype(float))[0, 1])


@pytest.mark.parametrize('dark_on_light', [True, False])
def test_photo_converts_back_to_the_mnist_digit(mnist_test, dark_on_light):
  for digit in mnist_test.images[:6]:
    converted = mnist_image.to_mnist(photo_of(digit, dark_on_light=dark_on_light))
    assert converted.shape == (28, 28) and converted.dtype == np.uint8
    assert converted.max() == 255
    assert similarity(converted, digit) > 0.9


def test_conversion_centres_by_mass_in_a_20px_box(mnist_test):
  converted = mnist_image.to_mnist(photo_of(mnist_test.images[1], size=(90, 500), scale=3,
                                            at=(2, 400)))
  rows, cols = np.nonzero(converted > 25)
  assert max(rows.ptp(), cols.ptp()) + 1 <= 21
  cy, cx = (np.indices(converted.shape) * converted).reshape(2, -1).sum(1) / converted.sum()
  assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_transparent_png_and_blank_image(mnist_test, tmp_path):
  digit = mnist_test.images[2]
  rgba = np.zeros((100, 100, 4), np.uint8)            # black ink, alpha = the digit
  rgba[..., 3] = np.asarray(Image.fromarray(digit).resize((100, 100)))
  path = tmp_path / 'digit.png'
  Image.fromarray(rgba, 'RGBA').save(path)
  assert similarity(mnist_image.load(str(path)), digit) > 0.85
  assert not mnist_image.to_mnist(Image.new('L', (50, 40), 255)).any()


def test_client_predict_equals_in_process(server, reference, mnist_test):
  client = ServingClient(server.rest_url)
  prediction = client.predict(mnist_test.images[:10], label='stable')
  expected = reference_predict(reference, 1, mnist_test.images[:10])
  np.testing.assert_array_equal(prediction.classes, expected['classes'])
  np.testing.assert_array_equal(prediction.probabilities, expected['probabilities'])
  assert client.status(version=2)['model_version_status'][0]['state'] == 'AVAILABLE'
  assert client.metadata()['model_spec']['version'] == '2'
  with pytest.raises(ServingClientError) as error:
    client.predict(mnist_test.images[:1], version=9)
  assert error.value.status == 404 and 'Specific(mnist, 9)' in str(error.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'serving.client', *args], cwd=process.PROJECT_ROOT,
                        capture_output=True, text=True, timeout=60, check=False)


def test_cli_predicts_an_idx_image(server, reference, mnist_test):
  images_file = idx.find_file(MNIST_DIR, idx.SOURCE_FILES['test'][0])
  result = run_cli('predict', '--url', server.rest_url, '--idx', str(images_file),
                   '--index', '3', '--version', '1')
  assert result.returncode == 0, result.stderr
  expected = reference_predict(reference, 1, mnist_test.images[3:4])
  assert result.stdout.splitlines()[0].startswith(f'class: {expected["classes"][0]} ')
  assert len(result.stdout.splitlines()) == 11     # the class, then ten probabilities


def test_cli_predicts_a_photo(server, reference, mnist_test, tmp_path):
  path = tmp_path / 'digit.jpg'
  photo_of(mnist_test.images[0]).save(path, quality=90)
  expected = reference_predict(reference, 2, mnist_image.load(str(path))[None])['classes'][0]
  result = run_cli('predict', '--url', server.rest_url, '--image', str(path))
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'class: {expected} ')
  assert expected == mnist_test.labels[0]


def test_cli_reports_server_errors(server, tmp_path):
  images_file = idx.find_file(MNIST_DIR, idx.SOURCE_FILES['test'][0])
  result = run_cli('predict', '--url', server.rest_url, '--idx', str(images_file),
                   '--label', 'nope')
  assert result.returncode == 1
  assert 'HTTP 400: Unrecognized servable version label: nope' in result.stderr
  result = run_cli('predict', '--url', 'http://127.0.0.1:9', '--idx', str(images_file))
  assert result.returncode == 1 and 'cannot reach' in result.stderr
