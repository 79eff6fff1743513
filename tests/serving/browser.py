"""Headless Chromium for the page's tests: Debian's package, installed when missing.

Playwright drives it by `executable_path`; no browser is ever downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable

import pytest

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync']
INSTALL = (['apt-get', 'update'], ['apt-get', 'install', '-y', 'chromium'])


def ensure_chromium(say: Callable[[str], None]) -> str:
  """CHROMIUM, installed with apt-get if missing (CI's fresh machine); skips if it cannot be."""
  if os.access(CHROMIUM, os.X_OK):
    return CHROMIUM
  if os.geteuid() != 0 or not shutil.which('apt-get'):
    pytest.skip(f'browser tests: {CHROMIUM} is missing and cannot be installed here '
                f'(apt-get as root is needed: apt-get install -y chromium)')
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  for command in INSTALL:
    say(f'[browser tests] {CHROMIUM} is missing; running: {" ".join(command)}')
    try:
      done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
      pytest.skip(f'browser tests: `{" ".join(command)}` took over 30 min; no {CHROMIUM}')
    if done.returncode:
      pytest.skip(f'browser tests: `{" ".join(command)}` failed (exit {done.returncode}), so '
                  f'no {CHROMIUM}:\n{done.stdout[-2000:]}')
  if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f'browser tests: `{" ".join(INSTALL[-1])}` succeeded but left no {CHROMIUM}')
  version = subprocess.run([CHROMIUM, '--version'], stdout=subprocess.PIPE, text=True,
                           check=False).stdout.strip()
  say(f'[browser tests] installed {version or CHROMIUM}')
  return CHROMIUM
