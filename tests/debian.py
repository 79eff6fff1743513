"""A program the tests need from a Debian package: installed with apt-get when missing (CI's
fresh machine), or the tests that need it skip, saying why and how to install it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable, Sequence

import pytest


def ensure_installed(path: str, commands: Sequence[Sequence[str]], what: str,
                     say: Callable[[str], None]) -> str:
  """`path`, after running `commands` (apt-get update, install) if it is missing."""
  if os.access(path, os.X_OK):
    return path
  if os.geteuid() != 0 or not shutil.which('apt-get'):
    pytest.skip(f'{what}: {path} is missing and cannot be installed here '
                f'(apt-get as root is needed: {" ".join(commands[-1])})')
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  for command in commands:
    say(f'[{what}] {path} is missing; running: {" ".join(command)}')
    try:
      done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
      pytest.skip(f'{what}: `{" ".join(command)}` took over 30 min; no {path}')
    if done.returncode:
      pytest.skip(f'{what}: `{" ".join(command)}` failed (exit {done.returncode}), so '
                  f'no {path}:\n{done.stdout[-2000:]}')
  if not os.access(path, os.X_OK):
    pytest.skip(f'{what}: `{" ".join(commands[-1])}` succeeded but left no {path}')
  return path
