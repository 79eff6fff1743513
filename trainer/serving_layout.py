"""Contract: TF Serving's directory layout, what the Pusher writes and the server reads.

A model's base path holds one folder per version, named by a positive integer, each a
complete SavedModel (`<base>/<version>/saved_model.pb`). Anything else is not a version:
hidden staging folders (`.push-*`) while a push is being copied, or partial copies
without `saved_model.pb`. A server serves the largest complete version (TF Serving's
default `latest` policy), so a new version must always get a larger number.

No TensorFlow and nothing of the project: the Pusher (components/), the model server
(serving/), the warm start (trainer/) and `pipeline lineage` all import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

# How a caller lists a folder and tests a file: `os` here; TFX's fileio (gs://, s3://)
# where the serving location is object storage.
ListDir = Callable[[str], List[str]]
IsFile = Callable[[str], bool]

SAVED_MODEL_FILE = 'saved_model.pb'
STAGING_PREFIX = '.push-'     # a push being copied; renamed to its version when complete
# What the Pusher adds beside the SavedModel, in the folder TF Serving leaves to tools:
# the evaluation the version passed (metrics, spans, run, code), for `pipeline lineage`.
EVALUATION_RECORD = 'assets.extra/evaluation.json'
PUSHER_FILES = (EVALUATION_RECORD,)
# TF Serving's SavedModel warm-up (WarmupConsts in TF Serving 2.16.1): PredictionLog records
# replayed before a version serves, at most this many. The export writes it; the official
# server and `python -m serving` read it.
WARMUP_REQUESTS = 'assets.extra/tf_serving_warmup_requests'
WARMUP_MAX_RECORDS = 1000


def versions(base: str, listdir: ListDir, isfile: IsFile) -> Dict[int, str]:
  """Integer-named folders of `base` holding saved_model.pb, on any filesystem; staging
  folders and partial copies don't count. A missing `base` has none."""
  try:
    names = [name.rstrip('/') for name in listdir(base)]
  except (FileNotFoundError, NotADirectoryError):
    return {}
  folders = {int(name): f'{base.rstrip("/")}/{name}' for name in names
             if name.isascii() and name.isdigit()}
  return {v: path for v, path in folders.items() if isfile(f'{path}/{SAVED_MODEL_FILE}')}


def discover(base_path: Path) -> Dict[int, Path]:
  """`versions` of a local folder."""
  found = versions(str(base_path), os.listdir, os.path.isfile)
  return {v: Path(path) for v, path in found.items()}


def latest_version(base_path: Path) -> Optional[Path]:
  """The version a model server serves by default: the largest complete one."""
  found = discover(base_path)
  return found[max(found)] if found else None


def next_version(base_path: Path, now: float) -> int:
  """The Unix time, as TFX's Pusher numbers versions, but above every name already there
  (complete or not): a clock set back, or a version pushed by hand, must not hide a new
  model, and two pushes in one second both land."""
  existing = [int(p.name) for p in Path(base_path).iterdir() if p.name.isdigit()]
  return max([int(now)] + [v + 1 for v in existing])
