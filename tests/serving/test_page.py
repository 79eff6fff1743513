"""The page in a real browser (headless Chromium, Playwright) against `python -m serving`
with a real model: draw a test digit with the mouse, upload one, send a correction and find
it in incoming/, a bad upload's message, corrections off, and a phone drawing by touch.
Screenshots go to outputs/screenshots/ for a person to look at."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from serving import process
from tests.serving import browser
from tests.serving.browser import draw_with_finger, draw_with_mouse, open_page, predicted
from tests.serving.conftest import MODEL_NAME, push

sync_api = pytest.importorskip(
    'playwright.sync_api',
    reason='playwright is not installed (the test extra in pyproject.toml; make setup)')

SCREENSHOTS = process.PROJECT_ROOT / 'outputs' / 'screenshots'
DESKTOP = {'viewport': {'width': 1280, 'height': 800}}
PHONE = {'viewport': {'width': 390, 'height': 844}, 'device_scale_factor': 2, 'is_mobile': True,
         'has_touch': True}
# Clear test digits (index into the test split: label), each predicted right when drawn.
DRAWN = 3      # a 0
UPLOADED = 0   # a 7


@pytest.fixture(scope='session')
def chromium(request: pytest.FixtureRequest) -> str:
  capture = request.config.pluginmanager.getplugin('capturemanager')
  with capture.global_and_fixture_disabled():  # CI's log shows an install as it happens
    return browser.ensure_chromium(print)


@pytest.fixture(scope='module')
def page_server(model_v1: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple]:
  """One version (the unbiased one) and a data dir for corrections."""
  root = tmp_path_factory.mktemp('page')
  push(model_v1, root / 'serving', 1)
  data_dir = root / 'data'
  with process.start_server(root / 'serving', MODEL_NAME,
                            args=['--data-dir', str(data_dir)]) as running:
    yield running, data_dir
    assert 'Traceback' not in running.log_text(), running.log_text()[-3000:]


@pytest.fixture(scope='module')
def chrome(chromium: str) -> Iterator[object]:
  with sync_api.sync_playwright() as playwright:
    launched = playwright.chromium.launch(executable_path=chromium, args=browser.ARGS)
    yield launched
    launched.close()


def png(pixels: np.ndarray, size: int) -> bytes:
  """A scan-like PNG: dark ink on white paper, larger than 28x28."""
  out = io.BytesIO()
  Image.fromarray(255 - pixels).resize((size, size), Image.BILINEAR).save(out, 'PNG')
  return out.getvalue()


def test_a_digit_drawn_with_the_mouse_is_predicted(chrome, page_server, mnist_test):
  server, _ = page_server
  page = open_page(chrome, server.rest_url + '/', **DESKTOP)
  assert page.locator('#model').inner_text() == 'Model mnist, version 1'
  draw_with_mouse(page, mnist_test.images[DRAWN])
  assert predicted(page) == mnist_test.labels[DRAWN]
  bars = page.locator('#bars li')
  assert bars.count() == 10
  assert bars.nth(int(mnist_test.labels[DRAWN])).get_attribute('class') == 'top'
  SCREENSHOTS.mkdir(parents=True, exist_ok=True)
  page.screenshot(path=str(SCREENSHOTS / 'page-desktop.png'))
  page.locator('#clear').click()
  assert page.locator('#answer').inner_text() == 'Draw a digit or upload an image.'
  assert page.errors == []


def test_an_uploaded_png_is_predicted_and_a_correction_lands_in_incoming(
    chrome, page_server, mnist_test):
  server, data_dir = page_server
  page = open_page(chrome, server.rest_url + '/', **DESKTOP)
  image = png(mnist_test.images[UPLOADED], 200)
  page.locator('#file').set_input_files(
      files=[{'name': 'seven.png', 'mimeType': 'image/png', 'buffer': image}])
  assert predicted(page) == mnist_test.labels[UPLOADED]
  page.locator('#clear').focus()
  page.keyboard.press('4')  # the digit keys send a correction, as the buttons do
  page.locator('#feedback.saved').wait_for()
  assert page.locator('#feedback').inner_text().startswith('Saved as a 4. ')
  stored = list((data_dir / 'incoming' / '4').iterdir())
  assert [p.read_bytes() for p in stored] == [image]  # the upload as sent
  assert page.locator('#digits button').first.is_disabled()  # sent once per image
  assert page.errors == []


def test_a_bad_upload_says_why(chrome, page_server):
  server, _ = page_server
  page = open_page(chrome, server.rest_url + '/', **DESKTOP)
  page.locator('#file').set_input_files(
      files=[{'name': 'notes.png', 'mimeType': 'image/png', 'buffer': b'not an image'}])
  error = page.locator('#error')
  error.wait_for()
  assert error.inner_text().startswith('Cannot use notes.png: Expected a PNG or JPEG image, '
                                       'cannot decode it')
  assert page.locator('#answer[data-digit]').count() == 0
  assert page.errors == []


def test_without_data_dir_the_page_says_corrections_are_off(chrome, server):
  page = open_page(chrome, server.rest_url + '/', **DESKTOP)
  note = page.locator('#feedback')
  note.filter(has_text='Corrections are off').wait_for()
  assert all(b.is_disabled() for b in page.locator('#digits button').all())


def test_on_a_phone_a_finger_draws(chrome, page_server, mnist_test):
  server, _ = page_server
  page = open_page(chrome, server.rest_url + '/', **PHONE)
  draw_with_finger(page, mnist_test.images[DRAWN])
  assert predicted(page) == mnist_test.labels[DRAWN]
  for part in ('#pad', '#bars', '#digits'):  # one column, nothing wider than the screen
    box = page.locator(part).bounding_box()
    assert box['x'] >= 0 and box['x'] + box['width'] <= 390, (part, box)
  SCREENSHOTS.mkdir(parents=True, exist_ok=True)
  page.screenshot(path=str(SCREENSHOTS / 'page-phone.png'), full_page=True)
  assert page.errors == []
