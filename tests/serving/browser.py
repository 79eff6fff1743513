"""Headless Chromium for the page's tests: Debian's package, installed when missing, and
how a person's drawing, waiting and reading are done on the page.

Playwright drives it by `executable_path`; no browser is ever downloaded.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, Iterator

import numpy as np

from tests import debian

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync']
INSTALL = (['apt-get', 'update'], ['apt-get', 'install', '-y', 'chromium'])


def ensure_chromium(say: Callable[[str], None]) -> str:
  """CHROMIUM, installed with apt-get if missing (CI's fresh machine); skips if it cannot be."""
  if os.access(CHROMIUM, os.X_OK):
    return CHROMIUM
  debian.ensure_installed(CHROMIUM, INSTALL, 'browser tests', say)
  version = subprocess.run([CHROMIUM, '--version'], stdout=subprocess.PIPE, text=True,
                           check=False).stdout.strip()
  say(f'[browser tests] installed {version or CHROMIUM}')
  return CHROMIUM


# --- driving the page ------------------------------------------------------------------

def open_page(chrome, url: str, **context):
  """A fresh context on the page, its model shown; script errors fail the test."""
  page = chrome.new_context(**context).new_page()
  errors = []
  page.on('pageerror', lambda e: errors.append(str(e)))
  page.errors = errors
  page.goto(url)
  page.locator('#model[data-version]').wait_for()
  return page


def predicted(page) -> int:
  """The digit shown once the page has answered for the latest drawing."""
  answer = page.locator('body[data-state=idle] #answer[data-digit]')
  answer.wait_for()
  return int(answer.get_attribute('data-digit'))


def strokes(pixels: np.ndarray, box: dict) -> Iterator[tuple]:
  """Each row's runs of ink in a 28x28 digit, as (start, end) points on the pad."""
  cell = box['width'] / 28
  for row, line in enumerate(pixels > 100):
    columns = np.flatnonzero(line)
    for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if columns.size else []:
      y = box['y'] + (row + 0.5) * cell
      yield (box['x'] + (run[0] + 0.5) * cell, y), (box['x'] + (run[-1] + 0.5) * cell, y)


def draw_with_mouse(page, pixels: np.ndarray) -> None:
  for (x0, y0), (x1, y1) in strokes(pixels, page.locator('#pad').bounding_box()):
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=2)
    page.mouse.up()


def draw_with_finger(page, pixels: np.ndarray) -> None:
  touch = page.context.new_cdp_session(page)
  for (x0, y0), (x1, y1) in strokes(pixels, page.locator('#pad').bounding_box()):
    touch.send('Input.dispatchTouchEvent', {'type': 'touchStart', 'touchPoints': [{'x': x0, 'y': y0}]})
    touch.send('Input.dispatchTouchEvent', {'type': 'touchMove', 'touchPoints': [{'x': x1, 'y': y1}]})
    touch.send('Input.dispatchTouchEvent', {'type': 'touchEnd', 'touchPoints': []})
