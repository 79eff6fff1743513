"""The span layout: which spans count as sealed, writing into incoming/, manifest checks."""

import io
import json
import os

import pytest
from PIL import Image

from trainer import data_layout


def png_bytes(seed: int = 0) -> bytes:
  out = io.BytesIO()
  Image.new('L', (8, 8), seed % 256).save(out, format='PNG')
  return out.getvalue()


def make_span(folder, files):
  """A span folder holding `files` ({relative path: bytes}) and a manifest describing them."""
  for rel, data in files.items():
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(data)
  data_layout.write_manifest(folder, 'images', [len(files)] + [0] * 9)
  return folder


def test_only_sealed_spans_with_canonical_numbers_are_listed(tmp_path):
  spans = tmp_path / 'spans'
  for name in ('12', '2', '03', '0', '²', '.sealing-abc', 'abc'):
    make_span(spans / name, {'0/a.png': png_bytes()})
  (spans / '7' / '0').mkdir(parents=True)          # being written: no manifest yet
  (spans / '7' / '0' / 'a.png').write_bytes(png_bytes())
  (spans / '9').write_text('a file, not a folder')
  found = data_layout.sealed_spans(str(tmp_path))  # str paths are accepted too
  assert list(found) == [2, 12]
  assert found[2] == spans / '2'
  assert data_layout.next_span_number(tmp_path) == 13
  assert data_layout.sealed_spans(tmp_path / 'nothing-here') == {}
  assert data_layout.next_span_number(tmp_path / 'nothing-here') == 1


def test_write_incoming_lands_whole_and_leaves_no_temp_file(tmp_path):
  data = png_bytes(3)
  path = data_layout.write_incoming(tmp_path, 4, data, '.PNG')
  assert path.parent == tmp_path / 'incoming' / '4' and path.suffix == '.png'
  assert path.read_bytes() == data
  jpeg = io.BytesIO()
  Image.new('RGB', (5, 5)).save(jpeg, format='JPEG')
  assert data_layout.write_incoming(tmp_path, 0, jpeg.getvalue(), 'jpg').suffix == '.jpg'
  assert not list((tmp_path / data_layout.INCOMING_TMP_DIR).iterdir())
  assert data_layout.count_incoming(tmp_path) == 2


@pytest.mark.parametrize('label,data,suffix,message', [
    (10, png_bytes(), '.png', r'expected a label 0-9, found 10'),
    (-1, png_bytes(), '.png', r'expected a label 0-9, found -1'),
    (True, png_bytes(), '.png', r'expected a label 0-9, found True'),
    ('3', png_bytes(), '.png', r"expected a label 0-9, found '3'"),
    (3, png_bytes(), '.gif', r"expected an image suffix .png, .jpg, .jpeg, found '.gif'"),
    (3, png_bytes(), '.jpg', r'expected .jpg data \(starting ffd8ff\), found bytes 89504e47'),
    (3, b'', '.png', r'expected .png data .*found bytes none'),
])
def test_write_incoming_refuses_bad_input(tmp_path, label, data, suffix, message):
  with pytest.raises(ValueError, match=message):
    data_layout.write_incoming(tmp_path, label, data, suffix)
  assert data_layout.count_incoming(tmp_path) == 0


def test_write_incoming_retries_when_incoming_is_moved_under_it(tmp_path, monkeypatch):
  """A hand-made `mv incoming` (outside the lock) between mkdir and rename loses nothing."""
  real_replace, calls = os.replace, []

  def moved_first(src, dst):
    if not calls:
      os.rename(tmp_path / 'incoming', tmp_path / 'moved')
    calls.append(dst)
    return real_replace(src, dst)

  monkeypatch.setattr(data_layout.os, 'replace', moved_first)
  path = data_layout.write_incoming(tmp_path, 5, png_bytes(), '.png')
  assert len(calls) == 2 and path.read_bytes() == png_bytes()
  assert not list((tmp_path / 'moved').rglob('*.png'))


def test_count_incoming_counts_complete_images_in_label_folders_only(tmp_path):
  incoming = tmp_path / 'incoming'
  for rel in ('1/a.png', '1/b.JPG', '9/c.jpeg', '1/.partial.png', '1/d.png.tmp', '1/e.txt',
              'x/f.png', 'g.png'):
    (incoming / rel).parent.mkdir(parents=True, exist_ok=True)
    (incoming / rel).write_bytes(png_bytes())
  assert data_layout.count_incoming(tmp_path) == 3
  assert data_layout.count_incoming(tmp_path / 'none') == 0


def test_manifest_round_trip(tmp_path):
  span = make_span(tmp_path / 'spans' / '1', {'0/a.png': png_bytes(1), '0/b.png': png_bytes(2)})
  manifest = data_layout.verify_span(span)
  assert manifest['format'] == 'images' and manifest['examples'] == 2
  assert manifest['label_counts'] == [2] + [0] * 9
  assert manifest['files']['0/a.png']['size'] == len(png_bytes(1))
  assert manifest['sealed_at'].endswith('+00:00')
  assert not [p for p in span.iterdir() if p.name.startswith('.')]  # no temp manifest left


def _break_size(span):
  (span / '0' / 'a.png').write_bytes(png_bytes(1) + b'x')


def _break_content(span):
  data = bytearray(png_bytes(1))
  data[-1] ^= 0xFF
  (span / '0' / 'a.png').write_bytes(bytes(data))


def _edit_manifest(**changes):
  def edit(span):
    manifest = json.loads((span / 'manifest.json').read_text())
    manifest.update(changes)
    (span / 'manifest.json').write_text(json.dumps(manifest))
  return edit


@pytest.mark.parametrize('damage,message', [
    (lambda s: (s / '0' / 'a.png').unlink(), r'0/a\.png: listed in manifest\.json but missing'),
    (_break_size, r'0/a\.png: manifest\.json expects \d+ bytes, found \d+'),
    (_break_content, r'0/a\.png: manifest\.json expects sha256 [0-9a-f]{64}, found [0-9a-f]{64}'),
    (lambda s: (s / '0' / 'z.png').write_bytes(b'late'), r'0/z\.png: not listed in manifest'),
    (lambda s: (s / '.DS_Store').write_bytes(b''), r'\.DS_Store: not listed in manifest'),
    (lambda s: (s / 'manifest.json').unlink(), r'manifest\.json: not found'),
    (lambda s: (s / 'manifest.json').write_text('{"trunc'), 'expected a JSON manifest'),
    (lambda s: (s / 'manifest.json').write_text('[]'), 'expected a JSON object, found list'),
    (_edit_manifest(examples='2'), r"expected field 'examples' of type int, found '2'"),
    (_edit_manifest(format='tfrecord'), r"found version 1 and format 'tfrecord'"),
    (_edit_manifest(label_counts=[1] + [0] * 9), r'expected 10 label counts summing to examples=2'),
    (_edit_manifest(files={'../x.png': {'size': 1, 'sha256': ''}}),
     r"inside the span, found '\.\./x\.png'"),
    (_edit_manifest(files={'0/a.png': {'size': '1'}}),
     r'expected \{"size": int, "sha256": str\}'),
])
def test_manifest_mismatch_is_refused_naming_the_file(tmp_path, damage, message):
  span = make_span(tmp_path / 'spans' / '1', {'0/a.png': png_bytes(1), '0/b.png': png_bytes(2)})
  damage(span)
  with pytest.raises(data_layout.ManifestError, match=message) as err:
    data_layout.verify_span(span)
  assert str(span) in str(err.value)
