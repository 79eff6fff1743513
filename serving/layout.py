"""Contract: TF Serving's directory layout, what the Pusher writes and the server reads.

A model's base path holds one folder per version, named by a positive integer, each a
complete SavedModel (`<base>/<version>/saved_model.pb`). Anything else is not a version:
hidden staging folders (`.push-*`) while a push is being copied, or partial copies
without `saved_model.pb`. A server serves the largest complete version (TF Serving's
default `latest` policy), so a new version must always get a larger number.

No TensorFlow and nothing of the project: the Pusher (components/) and the model server
(serving/) both import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

SAVED_MODEL_FILE = 'saved_model.pb'
STAGING_PREFIX = '.push-'     # a push being copied; renamed to its version when complete


def discover(base_path: Path) -> Dict[int, Path]:
  """Integer-named folders holding saved_model.pb; temp dirs and partial copies don't count."""
  try:
    entries = list(os.scandir(base_path))
  except (FileNotFoundError, NotADirectoryError):
    return {}
  return {int(e.name): Path(e.path) for e in entries
          if e.name.isdigit() and e.is_dir() and (Path(e.path) / SAVED_MODEL_FILE).is_file()}


def latest_version(base_path: Path) -> Optional[Path]:
  """The version a model server serves by default: the largest complete one."""
  versions = discover(base_path)
  return versions[max(versions)] if versions else None


def next_version(base_path: Path, now: float) -> int:
  """The Unix time, as TFX's Pusher numbers versions, but above every name already there
  (complete or not): a clock set back, or a version pushed by hand, must not hide a new
  model, and two pushes in one second both land."""
  existing = [int(p.name) for p in Path(base_path).iterdir() if p.name.isdigit()]
  return max([int(now)] + [v + 1 for v in existing])
