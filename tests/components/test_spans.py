"""Sealing incoming/ and hand-made folders into spans, and reading spans back."""

import collections
import hashlib
import io
import logging
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from components import spans
from trainer import data_layout, idx, mnist_image


def digit(size=(60, 80), ink=(0, 0, 0), paper=(255, 255, 255), mode='RGB', seed=0) -> Image.Image:
  """A stroke drawn like a '1' with a foot; `seed` shifts it so every image differs."""
  image = Image.new(mode, size, paper)
  draw = ImageDraw.Draw(image)
  w, h = size
  x = w // 2 + seed % 7 - 3
  draw.line([(x, h // 6), (x, 5 * h // 6)], fill=ink, width=max(2, w // 10))
  draw.line([(x - w // 5, 5 * h // 6), (x + w // 5 + seed % 5, 5 * h // 6)], fill=ink,
            width=max(2, w // 12))
  return image


def encode(image: Image.Image, fmt: str = 'PNG') -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt)
  return out.getvalue()


def image_folder(folder, per_label):
  """Label folders of small PNGs: {label: count}."""
  for label, count in per_label.items():
    (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      (folder / str(label) / f'{i}.png').write_bytes(encode(digit(seed=i)))
  return folder


def idx_span_folder(folder, n=12, gzipped=True):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  labels = (np.arange(n) % 10).astype(np.uint8)
  folder.mkdir(parents=True, exist_ok=True)
  suffix = '.gz' if gzipped else ''
  idx.write_idx(folder / ('train-images-idx3-ubyte' + suffix), images)
  idx.write_idx(folder / ('train-labels-idx1-ubyte' + suffix), labels)
  return images, labels


def sealed_by_hand(folder):
  """A span whose manifest matches whatever the test put in it (bypassing the sealer's checks)."""
  data_layout.write_manifest(folder, 'images', [1] + [0] * 9)
  return folder


def test_seals_incoming_as_numbered_spans(tmp_path):
  assert spans.seal_incoming(tmp_path) is None  # nothing there, and nothing written
  assert not list(tmp_path.iterdir())
  for label in (3, 1, 3):
    data_layout.write_incoming(tmp_path, label, encode(digit(seed=label)), '.png')
  assert spans.seal_incoming(tmp_path) == 1
  assert not (tmp_path / 'incoming').exists() and data_layout.count_incoming(tmp_path) == 0
  images, labels = spans.read_span(tmp_path / 'spans' / '1')
  assert labels.tolist() == [1, 3, 3] and images.shape == (3, 28, 28) and images.dtype == np.uint8
  manifest = data_layout.read_manifest(tmp_path / 'spans' / '1')
  assert manifest['format'] == 'images' and manifest['examples'] == 3
  assert manifest['label_counts'] == [0, 1, 0, 2, 0, 0, 0, 0, 0, 0]

  (tmp_path / 'incoming' / '2').mkdir(parents=True)  # empty label folders: nothing sealed
  assert spans.seal_incoming(tmp_path) is None
  (tmp_path / 'spans' / '5').mkdir()                 # someone is writing span 5 by hand
  data_layout.write_incoming(tmp_path, 0, encode(digit()), '.png')
  assert spans.seal_incoming(tmp_path) == 6
  assert list(data_layout.sealed_spans(tmp_path)) == [1, 6]
  assert not [p for p in (tmp_path / 'spans').iterdir() if p.name.startswith('.sealing-')]


def test_images_are_converted_the_mnist_way(tmp_path):
  """Coloured, large, dark-on-light, light-on-dark, transparent; PNG and JPEG."""
  sources = {
      '0/colour.png': encode(digit((300, 420), ink=(200, 30, 30), paper=(230, 240, 255))),
      '1/dark-on-light.jpg': encode(digit((90, 120)), 'JPEG'),
      '2/light-on-dark.jpeg': encode(digit((40, 40), ink=(255,) * 3, paper=(0,) * 3), 'JPEG'),
      '3/gray.png': encode(digit((28, 28), ink=0, paper=255, mode='L')),
      '4/transparent.png': encode(digit((50, 70), ink=(0, 0, 0, 255), paper=(0, 0, 0, 0),
                                        mode='RGBA')),
  }
  source = tmp_path / 'source'
  for rel, data in sources.items():
    (source / rel).parent.mkdir(parents=True, exist_ok=True)
    (source / rel).write_bytes(data)
  number = spans.seal_folder(tmp_path / 'data', source)
  images, labels = spans.read_span(tmp_path / 'data' / 'spans' / str(number))
  assert labels.tolist() == [0, 1, 2, 3, 4]
  for image, rel in zip(images, sources):
    np.testing.assert_array_equal(image, mnist_image.load(str(source / rel)))  # the one definition
    assert image.max() == 255                          # white ink ...
    assert not image[0].any() and not image[-1].any()  # ... on a black border
    rows, cols = np.nonzero(image)
    assert rows.max() - rows.min() + 1 <= 20 and cols.max() - cols.min() + 1 <= 20
    cy, cx = (np.indices(image.shape) * image).reshape(2, -1).sum(1) / image.sum()
    assert abs(cy - 14) < 2 and abs(cx - 14) < 2


def test_seal_folder_idx_form_and_source_left_untouched(tmp_path):
  images, labels = idx_span_folder(tmp_path / 'source')
  (tmp_path / 'source' / '.DS_Store').write_bytes(b'junk')  # hidden files are not copied
  before = sorted(p.name for p in (tmp_path / 'source').iterdir())
  assert spans.seal_folder(tmp_path / 'data', tmp_path / 'source') == 1
  assert sorted(p.name for p in (tmp_path / 'source').iterdir()) == before
  read_images, read_labels = spans.read_span(tmp_path / 'data' / 'spans' / '1')
  np.testing.assert_array_equal(read_images, images)
  np.testing.assert_array_equal(read_labels, labels)
  manifest = data_layout.read_manifest(tmp_path / 'data' / 'spans' / '1')
  assert manifest['format'] == 'idx' and manifest['label_counts'] == [2, 2] + [1] * 8
  assert sorted(manifest['files']) == ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz']

  image_folder(tmp_path / 'more', {7: 2})
  assert spans.seal_folder(tmp_path / 'data', tmp_path / 'more') == 2
  assert spans.read_span(tmp_path / 'data' / 'spans' / '2')[1].tolist() == [7, 7]


def _undecodable(folder):
  image_folder(folder, {1: 1})
  (folder / '1' / 'broken.png').write_bytes(encode(digit())[:40])


def _bad_label_folder(folder):
  image_folder(folder, {1: 1, 'ten': 1})


def _unknown_type(folder):
  image_folder(folder, {2: 1})
  (folder / '2' / 'notes.txt').write_text('hello')


def _stray_file(folder):
  image_folder(folder, {2: 1})
  (folder / 'labels.csv').write_text('a,1')


def _nested(folder):
  image_folder(folder, {2: 1})
  (folder / '2' / 'more').mkdir()
  (folder / '2' / 'more' / 'x.png').write_bytes(encode(digit()))


def _empty(folder):
  (folder / '3').mkdir(parents=True)


def _test_file(folder):
  idx_span_folder(folder)
  idx.write_idx(folder / 't10k-labels-idx1-ubyte.gz', np.zeros(3, np.uint8))


def _mixed(folder):
  idx_span_folder(folder)
  image_folder(folder, {1: 1})


def _bad_idx(folder):
  idx_span_folder(folder)
  idx.write_idx(folder / 'train-labels-idx1-ubyte.gz', np.zeros(5, np.uint8))


def _both_spellings(folder):
  idx_span_folder(folder)
  idx_span_folder(folder, gzipped=False)


BAD_FOLDERS = [
    (_undecodable, r'1/broken\.png: cannot decode it as a PNG or JPEG image'),
    (_bad_label_folder, r"ten: expected a label folder named 0-9, found folder 'ten'"),
    (_unknown_type, r"2/notes\.txt: unknown file type '\.txt' \(expected \.png, \.jpg, \.jpeg\)"),
    (_stray_file, r'labels\.csv: unknown file type outside the label folders'),
    (_nested, r'2/more: expected image files in label folder 2, found a folder'),
    (_empty, r'empty span: expected label folders 0-9'),
    (_test_file, r't10k-labels-idx1-ubyte\.gz: a span holds no test files'),
    (_mixed, r'1: unexpected folder beside the IDX files'),
    (_bad_idx, r'train-images-idx3-ubyte\.gz: holds 12 images but '
               r'train-labels-idx1-ubyte\.gz holds 5'),
    (_both_spellings, r'expected one of train-images-idx3-ubyte or '
                      r'train-images-idx3-ubyte\.gz, found both'),
]


@pytest.mark.parametrize('make,message', BAD_FOLDERS)
def test_seal_folder_refuses_bad_files_naming_them(tmp_path, make, message):
  source = tmp_path / 'source'
  source.mkdir()
  make(source)
  with pytest.raises(spans.SpanError, match=message) as err:
    spans.seal_folder(tmp_path / 'data', source)
  assert str(source) in str(err.value)
  assert data_layout.sealed_spans(tmp_path / 'data') == {}
  assert not list(tmp_path.glob('data/spans/*'))  # no staging left behind


@pytest.mark.parametrize('make,message', BAD_FOLDERS)
def test_read_span_refuses_bad_files_naming_them(tmp_path, make, message):
  span = tmp_path / 'spans' / '1'
  span.mkdir(parents=True)
  make(span)
  sealed_by_hand(span)
  with pytest.raises(spans.SpanError, match=message) as err:
    spans.read_span(span)
  assert str(span) in str(err.value)


def test_read_span_refuses_unsealed_and_tampered_spans(tmp_path):
  span = image_folder(tmp_path / 'spans' / '4', {5: 2})
  with pytest.raises(spans.SpanError, match=r'4/manifest\.json: not found'):
    spans.read_span(span)                                  # half-written: never half-read
  assert data_layout.sealed_spans(tmp_path) == {}
  data_layout.write_manifest(span, 'images', [0] * 5 + [2] + [0] * 4)
  assert spans.read_span(span)[1].tolist() == [5, 5]
  (span / '5' / '1.png').write_bytes(encode(digit(seed=9)))
  with pytest.raises(spans.SpanError, match=r'5/1\.png: manifest\.json expects (sha256|\d+ bytes)'):
    spans.read_span(span)
  data_layout.write_manifest(span, 'images', [0] * 5 + [1] + [0] * 4)  # wrong counts
  with pytest.raises(spans.SpanError, match=r"expects format 'images' with label counts "
                                            r'\[0, 0, 0, 0, 0, 1, 0, 0, 0, 0\], found '
                                            r"'images' with \[0, 0, 0, 0, 0, 2,"):
    spans.read_span(span)


def test_bad_incoming_files_are_set_aside_with_reasons(tmp_path, caplog):
  data_layout.write_incoming(tmp_path, 8, encode(digit()), '.png')
  incoming = tmp_path / 'incoming'
  (incoming / '8' / 'cut.png').write_bytes(encode(digit())[:30])
  (incoming / '8' / '.upload.png.tmp').write_bytes(b'half')   # temp files are dropped
  (incoming / 'eleven').mkdir()
  (incoming / 'eleven' / 'a.png').write_bytes(encode(digit()))
  with caplog.at_level(logging.WARNING):
    assert spans.seal_incoming(tmp_path) == 1
  assert spans.read_span(tmp_path / 'spans' / '1')[1].tolist() == [8]
  [rejected] = (tmp_path / 'rejected').iterdir()
  assert (rejected / '8' / 'cut.png').is_file() and (rejected / 'eleven' / 'a.png').is_file()
  reasons = (rejected / 'reasons.txt').read_text()
  assert '8/cut.png: cannot decode it' in reasons and "found folder 'eleven'" in reasons
  assert '8/cut.png' in caplog.text


def test_a_killed_seal_is_resumed_and_a_partial_copy_dropped(tmp_path, caplog):
  """Staged content (complete by construction) is sealed first, as its own span."""
  leftover = image_folder(tmp_path / 'spans' / '.sealing-dead', {6: 2})
  (leftover / '6' / '.tmp-x').write_bytes(b'')
  partial = image_folder(tmp_path / 'spans' / '.copying-dead', {6: 1})
  data_layout.write_incoming(tmp_path, 2, encode(digit()), '.png')
  with caplog.at_level(logging.WARNING):
    assert spans.seal_incoming(tmp_path) == 2
  assert spans.read_span(tmp_path / 'spans' / '1')[1].tolist() == [6, 6]
  assert spans.read_span(tmp_path / 'spans' / '2')[1].tolist() == [2]
  assert not leftover.exists() and not partial.exists()
  assert 'interrupted seal' in caplog.text

  broken = tmp_path / 'spans' / '.sealing-bad'        # one that cannot be sealed: reported,
  idx_span_folder(broken)                              # kept, and it blocks nothing else
  (broken / 'train-labels-idx1-ubyte.gz').write_bytes(b'not gzip')
  assert spans.seal_incoming(tmp_path) is None
  assert broken.is_dir() and 'cannot seal it, left in place' in caplog.text
  assert spans.seal_folder(tmp_path, image_folder(tmp_path / 'src', {1: 1})) == 3


def test_temp_files_of_killed_writers_are_dropped_when_stale(tmp_path):
  tmp_dir = tmp_path / data_layout.INCOMING_TMP_DIR
  tmp_dir.mkdir()
  (tmp_dir / 'old.tmp').write_bytes(b'killed mid-write')
  os.utime(tmp_dir / 'old.tmp', (0, time.time() - spans.STALE_TEMP_SECONDS - 5))
  (tmp_dir / 'fresh.tmp').write_bytes(b'being written')
  assert spans.seal_incoming(tmp_path) is None
  assert [p.name for p in tmp_dir.iterdir()] == ['fresh.tmp']


def test_writing_while_sealing_loses_and_duplicates_nothing(tmp_path):
  """Every file written lands exactly once, whole, in a sealed span or still in incoming."""
  payloads = [encode(digit((20 + i % 9, 30), seed=i), 'PNG' if i % 3 else 'JPEG')
              for i in range(150)]
  assert len({hashlib.sha256(p).digest() for p in payloads}) == len(payloads)
  done, sealed, errors = threading.Event(), [], []

  def write():
    try:
      for i, data in enumerate(payloads):
        data_layout.write_incoming(tmp_path, i % 10, data, '.png' if i % 3 else '.jpg')
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
    finally:
      done.set()

  def seal():
    try:
      while not done.is_set():
        sealed.append(spans.seal_incoming(tmp_path))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=write), threading.Thread(target=seal)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert len([n for n in sealed if n]) >= 2  # the writer really raced several seals
  found = collections.Counter()
  total = 0
  for number, span in data_layout.sealed_spans(tmp_path).items():
    data_layout.verify_span(span)
    total += len(spans.read_span(span)[1])
    found.update(hashlib.sha256(p.read_bytes()).digest() for p in span.glob('*/*'))
  found.update(hashlib.sha256(p.read_bytes()).digest()
               for p in (tmp_path / 'incoming').glob('*/*'))
  assert found == collections.Counter(hashlib.sha256(p).digest() for p in payloads)
  assert total + data_layout.count_incoming(tmp_path) == len(payloads)
  assert not (tmp_path / 'rejected').exists()
  assert not list((tmp_path / data_layout.INCOMING_TMP_DIR).iterdir())
