"""Cache keys for user code: a hash of a module and the project modules it imports.

TFX caches Transform and Trainer by their inputs and parameters, and names user code by
a dotted function name, so an edit of that code alone would be served from the cache.
Each of the two gets the fingerprint of its own code as a parameter: the preprocessing
module's closure (it includes the feature contract) for Transform, `run_fn`'s closure
(model, schedules, data, export, hyperparameter definitions, ...) for the Trainer. An
edit of the learning-rate schedule re-runs the Trainer, not Transform.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Iterator, Optional, Set

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ('pipeline', 'components', 'trainer', 'serving', 'kubeflow')


def module_path(module: str, root: Path = REPO_ROOT) -> Optional[Path]:
  """The file of a project module (`trainer.run` -> trainer/run.py), or None."""
  base = root.joinpath(*module.split('.'))
  for path in (base.with_suffix('.py'), base / '__init__.py'):
    if path.is_file():
      return path
  return None


def imported_modules(module: str, root: Path = REPO_ROOT) -> Iterator[str]:
  """The project modules `module` imports anywhere in its file (also inside functions):
  `from trainer import features` counts as `trainer.features`."""
  path = module_path(module, root)
  tree = ast.parse(path.read_text(), str(path))
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      names = [f'{base}.{alias.name}' if module_path(f'{base}.{alias.name}', root) else base
               for alias in node.names]
    else:
      continue
    for name in names:
      if name.split('.')[0] in PROJECT_PACKAGES and module_path(name, root):
        yield name


def closure(module: str, root: Path = REPO_ROOT) -> Set[str]:
  """`module` and every project module it reaches through imports."""
  seen: Set[str] = set()
  pending = [module]
  while pending:
    name = pending.pop()
    if name not in seen:
      seen.add(name)
      pending.extend(imported_modules(name, root))
  return seen


def code_fingerprint(module: str, root: Path = REPO_ROOT) -> str:
  """Hash of the source of `module`'s closure: changes when any of that code changes."""
  digest = hashlib.sha256()
  for name in sorted(closure(module, root)):
    digest.update(name.encode() + b'\0' + module_path(name, root).read_bytes())
  return digest.hexdigest()[:16]
