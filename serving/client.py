"""A small REST client for the model server, and `python -m serving.client predict`.

It speaks only TF Serving's REST protocol (no TensorFlow, no gRPC), so it works against
the official `tensorflow/serving` image and this project's server alike.

  python -m serving.client predict --url http://127.0.0.1:8501 --image digit.png
  python -m serving.client predict --url http://127.0.0.1:8501 --idx t10k-images-idx3-ubyte.gz --index 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

import numpy as np

from trainer import features


class ServingClientError(RuntimeError):
  """The server answered with an error (its JSON `error` message) or could not be reached."""

  def __init__(self, message: str, status: Optional[int] = None):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass
class Prediction:
  classes: np.ndarray        # int64 [n]
  probabilities: np.ndarray  # float32 [n, 10]


class ServingClient:
  """REST calls on one model: status, metadata, predict on raw 0-255 pixels."""

  def __init__(self, url: str, model: str = 'mnist', timeout: float = 30):
    self.url = url.rstrip('/')
    self.model = model
    self.timeout = timeout

  def _model_path(self, version: Optional[int] = None, label: Optional[str] = None) -> str:
    path = f'{self.url}/v1/models/{self.model}'
    if version is not None:
      path += f'/versions/{version}'
    elif label:
      path += f'/labels/{label}'
    return path

  def _call(self, url: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method='GET' if data is None else 'POST',
                                     headers={'Content-Type': 'application/json'})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        return json.loads(response.read())
    except urllib.error.HTTPError as e:
      raw = e.read()
      try:
        message = json.loads(raw)['error']
      except (ValueError, KeyError, TypeError):
        message = raw.decode(errors='replace') or e.reason
      raise ServingClientError(f'HTTP {e.code}: {message}', e.code) from None
    except urllib.error.URLError as e:
      raise ServingClientError(f'cannot reach {url}: {e.reason}') from None

  def status(self, version: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
    return self._call(self._model_path(version, label))

  def metadata(self, version: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
    return self._call(self._model_path(version, label) + '/metadata')

  def predict(self, images: np.ndarray, version: Optional[int] = None,
              label: Optional[str] = None) -> Prediction:
    """images: [n, 28, 28] (or one [28, 28]) raw pixels 0-255."""
    images = np.asarray(images)
    if images.ndim == 2:
      images = images[None]
    body = {'signature_name': features.SERVING_DEFAULT, 'instances': images.tolist()}
    rows: List[Dict[str, Any]] = self._call(self._model_path(version, label) + ':predict',
                                            body)['predictions']
    return Prediction(np.array([r[features.CLASSES_OUTPUT] for r in rows], np.int64),
                      np.array([r[features.PROBABILITIES_OUTPUT] for r in rows], np.float32))


def _load_image(args: argparse.Namespace) -> np.ndarray:
  if args.image:
    from trainer import mnist_image  # pylint: disable=import-outside-toplevel
    return mnist_image.load(args.image)
  from trainer import idx  # pylint: disable=import-outside-toplevel
  images = idx.read_images(args.idx)
  if not 0 <= args.index < len(images):
    raise SystemExit(f'--index {args.index} is out of range: {args.idx} holds {len(images)} images')
  return images[args.index]


def format_prediction(prediction: Prediction) -> str:
  probs = prediction.probabilities[0]
  lines = [f'class: {int(prediction.classes[0])} (probability {probs.max():.4f})']
  for digit, p in enumerate(probs):
    lines.append(f'  {digit}: {p:.4f} {"#" * int(round(p * 40))}')
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m serving.client')
  commands = parser.add_subparsers(dest='command', required=True)
  predict = commands.add_parser('predict', help='classify one digit image')
  predict.add_argument('--url', default='http://127.0.0.1:8501',
                       help='REST base URL of the server (TF Serving or this project\'s)')
  predict.add_argument('--model', default='mnist')
  source = predict.add_mutually_exclusive_group(required=True)
  source.add_argument('--image', help='PNG/JPEG of any size; converted the MNIST way')
  source.add_argument('--idx', help='an MNIST IDX images file (.gz or not)')
  predict.add_argument('--index', type=int, default=0, help='which image of --idx')
  pin = predict.add_mutually_exclusive_group()
  pin.add_argument('--version', type=int)
  pin.add_argument('--label', help='a version label such as stable or canary')
  args = parser.parse_args(argv)
  client = ServingClient(args.url, args.model)
  try:
    prediction = client.predict(_load_image(args), args.version, args.label)
  except ServingClientError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(format_prediction(prediction))
  return 0


if __name__ == '__main__':
  sys.exit(main())
