"""Imports run one way: contracts at the bottom, components and trainer on them, pipeline
composing, runners on top, serving on the contracts alone (../shared/docs/architecture.md).

Every module's imports are read with `ast` (also those inside functions), so an edge the
wrong way fails here before it becomes a cycle.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Dict, List, Optional, Set

import pytest

from pipeline import fingerprint

# Small modules every layer may import: no TensorFlow, nothing of the project above them.
CONTRACTS = frozenset({
    'trainer.features',     # feature names, splits, serving signatures
    'trainer.hparams',      # the training hyperparameters
    'trainer.idx',          # the MNIST IDX file format
    'trainer.mnist_image',  # any image -> a 28x28 MNIST-style digit
    'trainer.logs',         # log set-up of the project's commands
    'trainer.data_layout',  # the data location: base, sealed spans, incoming/
    'trainer.serving_layout',  # TF Serving's directory layout and version rules
})
HEAVY = ('tensorflow', 'tf_keras', 'tfx', 'tfx_bsl', 'apache_beam', 'tensorflow_transform',
         'tensorflow_model_analysis', 'tensorflow_data_validation', 'ml_metadata', 'kfp')
RUNNERS = frozenset({'pipeline.local_runner', 'pipeline.__main__'})
# Which groups a group may import, besides the contracts and itself.
MAY_IMPORT: Dict[str, Set[str]] = {
    'components': set(),
    'trainer': set(),
    'pipeline': {'components', 'trainer'},
    'runner': {'pipeline', 'components', 'trainer'},
    'kubeflow': {'pipeline', 'components', 'trainer'},
    'serving': set(),
    'benchmarks': {'runner', 'pipeline', 'components', 'trainer', 'serving', 'kubeflow',
                   'tests'},
}
PACKAGES = (*fingerprint.PROJECT_PACKAGES, 'benchmarks')


def group(module: str) -> str:
  if module in CONTRACTS:
    return 'contract'
  if module in RUNNERS:
    return 'runner'
  return module.split('.')[0]


def violation(importer: str, imported: str) -> Optional[str]:
  """Why `importer` must not import `imported`, or None when the edge runs the right way."""
  source, target = group(importer), group(imported)
  if source == 'contract':
    return None if target == 'contract' else (
        f'{importer} is a contract: it imports only other contracts, found {imported}')
  if target in ('contract', source) or target in MAY_IMPORT[source]:
    return None
  return f'{importer} ({source}) must not import {imported} ({target})'


def project_modules() -> List[str]:
  root = fingerprint.REPO_ROOT
  modules = []
  for package in PACKAGES:
    for path in sorted((root / package).rglob('*.py')):
      parts = path.relative_to(root).with_suffix('').parts
      modules.append('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
  return modules


def import_graph() -> Dict[str, Set[str]]:
  return {m: set(fingerprint.imported_modules(m)) for m in project_modules()}


def test_every_import_runs_the_right_way():
  wrong = [why for importer, targets in import_graph().items() for imported in targets
           if (why := violation(importer, imported))]
  assert not wrong, '\n'.join(wrong)


def _cyclic(graph: Dict[str, Set[str]]) -> List[str]:
  """The nodes that reach themselves."""

  def reaches(start: str, goal: str) -> bool:
    seen, pending = set(), list(graph.get(start, ()))
    while pending:
      module = pending.pop()
      if module == goal:
        return True
      if module not in seen:
        seen.add(module)
        pending.extend(graph.get(module, ()))
    return False

  return [node for node in graph if reaches(node, node)]


def test_no_import_cycles_between_modules_or_top_level_packages():
  graph = import_graph()
  assert not _cyclic(graph), f'modules on an import cycle: {_cyclic(graph)}'
  packages: Dict[str, Set[str]] = {}
  for importer, targets in graph.items():
    packages.setdefault(importer.split('.')[0], set()).update(
        t.split('.')[0] for t in targets if t.split('.')[0] != importer.split('.')[0])
  assert not _cyclic(packages), f'packages on an import cycle: {_cyclic(packages)}'


def test_contracts_import_nothing_heavy():
  for module in CONTRACTS:
    path = fingerprint.module_path(module)
    heavy = [line.strip() for line in path.read_text().splitlines()
             if line.strip().startswith(('import ', 'from ')) and
             line.split()[1].split('.')[0] in HEAVY]
    assert not heavy, f'{module}: {heavy}'


@pytest.mark.parametrize('importer, imported', [
    # The edges that ran the wrong way before the layers were set (issue: one-way layers).
    ('trainer.model', 'pipeline.configs'),
    ('trainer.run', 'pipeline.configs'),
    ('components.preflight', 'pipeline.configs'),
    ('components.atomic_pusher', 'serving.models'),
    ('serving.__main__', 'pipeline.logs'),
    ('serving.client', 'components.idx'),
    ('pipeline.pipeline', 'pipeline.local_runner'),
    ('trainer.features', 'pipeline.configs'),
])
def test_the_rule_refuses_the_old_wrong_way_edges(importer, imported):
  assert violation(importer, imported)


def test_the_server_runs_without_pipeline_components_kubeflow_or_tfx():
  """Importing the server pulls in only serving/ and the contracts (TensorFlow, yes)."""
  code = ('import sys, serving.server, serving.__main__, serving.client\n'
          'print(sorted({m.split(".")[0] for m in sys.modules}))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=fingerprint.REPO_ROOT, timeout=300, check=True)
  loaded = set(eval(result.stdout.strip().splitlines()[-1]))  # pylint: disable=eval-used
  assert 'tensorflow' in loaded and 'serving' in loaded
  assert not loaded & {'pipeline', 'components', 'kubeflow', 'tfx'}, loaded
