"""Version discovery, loading and hot swap for one model's base path.

The base path holds TF Serving's layout, `<base>/<integer version>/saved_model.pb`. A poll
finds complete version folders, asks the version policy which to serve, loads new ones
fully (and warms them up) before they become visible, then retires the ones the policy
no longer wants. Requests read one immutable `Snapshot`, replaced in a single assignment,
so an in-flight request keeps the servable it started with: a swap never fails it.

A folder that fails to load is logged, reported as END with its error in the status,
and left alone until its files change; the versions already serving stay.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import grpc

from serving.config import ModelPolicy
from serving.errors import ServingError, invalid, not_found
from trainer.serving_layout import discover
from serving.servable import Servable

log = logging.getLogger(__name__)

# TF Serving's ModelVersionStatus.State names.
START, LOADING, AVAILABLE, UNLOADING, END = 'START', 'LOADING', 'AVAILABLE', 'UNLOADING', 'END'

Fingerprint = Tuple[Tuple[str, int, int], ...]


@dataclasses.dataclass(frozen=True)
class VersionStatus:
  version: int
  state: str
  error_code: grpc.StatusCode = grpc.StatusCode.OK
  error_message: str = ''


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """What requests see: the available servables and the labels, swapped as one object."""
  servables: Mapping[int, Servable]
  labels: Mapping[str, int]


def fingerprint(path: Path) -> Fingerprint:
  """Names, sizes and mtimes of every file: changes while a copy is still being written."""
  result = []
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      try:
        st = os.stat(full)
      except FileNotFoundError:
        continue
      result.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
  return tuple(sorted(result))


LoadFn = Callable[[str, int, Path], Servable]


class ModelManager:
  """Serves one model: which versions are loaded, their status, and request routing."""

  def __init__(self, name: str, base_path: Path, policy: Callable[[], ModelPolicy],
               load: LoadFn):
    self.name = name
    self.base_path = Path(base_path)
    self._policy = policy
    self._load = load
    self._snapshot = Snapshot({}, {})
    self._status: Dict[int, VersionStatus] = {}
    self._failed: Dict[int, Fingerprint] = {}
    self._seen: Dict[int, Fingerprint] = {}
    self._lock = threading.Lock()          # one poll at a time; readers never take it
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # --- request side -----------------------------------------------------------------

  def _check_name(self, name: str, what: str) -> None:
    if name != self.name:
      raise not_found(f'Servable not found for request: {what}')

  def _label_version(self, snapshot: Snapshot, label: str) -> int:
    if label not in snapshot.labels:
      raise invalid(f'Unrecognized servable version label: {label}')
    return snapshot.labels[label]

  def resolve(self, name: str, version: Optional[int] = None,
              label: Optional[str] = None) -> Servable:
    """The servable a request should use: a pinned version, a label's, or the latest."""
    if version is not None and label:
      raise invalid(f'Both model version ({version}) and model version label ({label}) '
                    f'cannot be supplied.')
    snapshot = self._snapshot
    if version is None and not label:
      self._check_name(name, f'Latest({name})')
      if not snapshot.servables:
        raise not_found(f'Servable not found for request: Latest({name})')
      return snapshot.servables[max(snapshot.servables)]
    self._check_name(name, f'Specific({name}, {version if version is not None else label})')
    if label:
      version = self._label_version(snapshot, label)
    servable = snapshot.servables.get(version)
    if servable is None:
      raise not_found(f'Servable not found for request: Specific({name}, {version})')
    return servable

  def status(self, name: str, version: Optional[int] = None,
             label: Optional[str] = None) -> List[VersionStatus]:
    """TF Serving's GetModelStatus: every version known, newest first, or just one."""
    if name != self.name:
      raise not_found(f'Could not find any versions of model {name}')
    if label:
      if version is not None:
        raise invalid(f'Both model version ({version}) and model version label ({label}) '
                      f'cannot be supplied.')
      version = self._label_version(self._snapshot, label)
    statuses = dict(self._status)
    if version is not None:
      if version not in statuses:
        raise not_found(f'Could not find version {version} of model {name}')
      return [statuses[version]]
    if not statuses:
      raise not_found(f'Could not find any versions of model {name}')
    return [statuses[v] for v in sorted(statuses, reverse=True)]

  @property
  def snapshot(self) -> Snapshot:
    return self._snapshot

  # --- poll side ----------------------------------------------------------------------

  def _set_status(self, version: int, state: str,
                  error: Optional[Tuple[grpc.StatusCode, str]] = None) -> None:
    code, message = error or (grpc.StatusCode.OK, '')
    self._status[version] = VersionStatus(version, state, code, message)

  def _publish(self, servables: Mapping[int, Servable], labels: Mapping[str, int]) -> None:
    self._snapshot = Snapshot(dict(servables), dict(labels))

  def poll_once(self, startup: bool = False) -> None:
    """One discovery pass. On startup, folders load at once; later, a folder must look
    the same on two polls in a row (its copy has finished) before it is loaded."""
    with self._lock:
      policy = self._policy()
      found = discover(self.base_path)
      prints = {v: fingerprint(p) for v, p in found.items()}
      for version in [v for v in self._failed if prints.get(v) != self._failed[v]]:
        del self._failed[version]               # changed or gone: worth another try
      servables = dict(self._snapshot.servables)
      candidates = {v for v in found if v in servables or (
          v not in self._failed and (startup or self._seen.get(v) == prints[v]))}
      self._seen = prints
      changed = False
      while True:
        wanted = policy.versions.select(candidates)
        to_load = sorted(wanted - set(servables), reverse=True)
        if not to_load:
          break
        for version in to_load:
          self._set_status(version, LOADING)
          changed = True
          try:
            servables[version] = self._load(self.name, version, found[version])
          except Exception as e:  # pylint: disable=broad-except
            log.error('Failed to load %s version %d from %s, skipping it: %s: %s',
                      self.name, version, found[version], type(e).__name__, e)
            self._failed[version] = prints[version]
            candidates.discard(version)
            code = e.code if isinstance(e, ServingError) else grpc.StatusCode.UNKNOWN
            self._set_status(version, END, (code, f'{type(e).__name__}: {e}'))
            continue
          self._set_status(version, AVAILABLE)
          self._publish(servables, policy.labels)   # visible as soon as it is ready
      retired = sorted(set(servables) - wanted)
      unloading = []
      for version in retired:
        self._set_status(version, UNLOADING)
        unloading.append(servables.pop(version))
      self._publish(servables, policy.labels)
      for servable in unloading:
        servable.close()   # requests already holding it still finish
      if retired:
        gc.collect()   # loaded SavedModels hold reference cycles: free the memory now
      for version in retired:
        self._set_status(version, END)
        log.info('Unloaded %s version %d', self.name, version)
      if changed or retired or startup:
        log.info('Serving %s versions %s', self.name, sorted(servables) or 'none')

  def start_polling(self, interval: float) -> None:
    def loop() -> None:
      while not self._stop.wait(interval):
        try:
          self.poll_once()
        except Exception:  # pylint: disable=broad-except
          log.exception('Model directory poll failed; will retry')
    self._thread = threading.Thread(target=loop, name='model-poller', daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread:
      self._thread.join(timeout=30)
