"""What the pipeline image holds, read from kubeflow/Dockerfile and its .dockerignore.

Not a Docker build (no engine here): the final stage's `WORKDIR`, `ENV` and plain `COPY`
lines, applied to the build context filtered the way Docker filters it (patterns in order,
the last match wins, `!` re-includes, a pattern matching a folder covers its content). The
launcher emulation runs tasks with that environment and working directory, this checkout
standing for `/app`; test_image.py checks the spec names only what the image has.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from pipeline.configs import REPO_ROOT

DOCKERFILE = REPO_ROOT / 'kubeflow' / 'Dockerfile'
DOCKERIGNORE = REPO_ROOT / 'kubeflow' / 'Dockerfile.dockerignore'  # BuildKit's per-file name
# Image variables that name the image's own interpreter: the emulation runs this one.
INTERPRETER_ENV = ('PATH', 'VIRTUAL_ENV')


def final_stage(text: str = '') -> List[Tuple[str, str]]:
  """(instruction, arguments) of the Dockerfile's last stage, continuation lines joined."""
  text = text or DOCKERFILE.read_text()
  joined = re.sub(r'\\\n(\s*#.*\n)*', ' ', text)
  lines = [line.strip() for line in joined.splitlines()
           if line.strip() and not line.strip().startswith('#')]
  instructions = [tuple(line.split(None, 1)) + ('',) for line in lines]
  stage = [(op.upper(), rest) for op, rest, *_ in instructions]
  last_from = max(i for i, (op, _) in enumerate(stage) if op == 'FROM')
  return stage[last_from + 1:]


def workdir(dockerfile: str = '') -> str:
  return [rest for op, rest in final_stage(dockerfile) if op == 'WORKDIR'][-1]


def environment() -> Dict[str, str]:
  """The final stage's ENV (KEY=VALUE form)."""
  env: Dict[str, str] = {}
  for op, rest in final_stage():
    if op == 'ENV':
      for item in shlex.split(rest):
        key, _, value = item.partition('=')
        env[key] = value
  return env


def workdir_here() -> Path:
  """The image's WORKDIR: this checkout (the image copies it to /app)."""
  return REPO_ROOT


def pod_environment(pod: Path, mirror: Path) -> Dict[str, str]:
  """A task's environment: the image's ENV with /app as this checkout, its own /tmp and
  home, and the launcher mirrors' root (kubeflow.entrypoint.LOCAL_ROOT_ENV)."""
  env = {key: value.replace(workdir(), str(workdir_here()))
         for key, value in environment().items() if key not in INTERPRETER_ENV}
  (pod / 'tmp').mkdir(parents=True, exist_ok=True)
  (pod / 'home').mkdir(parents=True, exist_ok=True)
  return {**env, 'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'HOME': str(pod / 'home'),
          'TMPDIR': str(pod / 'tmp'), 'LANG': 'C.UTF-8', 'ARTIFACT_LOCAL_PATH': str(mirror)}


def _pattern_regex(pattern: str) -> 're.Pattern[str]':
  """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on relative paths."""
  pattern = os.path.normpath(pattern.strip().lstrip('/'))
  out = ''
  i = 0
  while i < len(pattern):
    if pattern.startswith('**/', i):
      out, i = out + '(?:.*/)?', i + 3
    elif pattern.startswith('**', i):
      out, i = out + '.*', i + 2
    elif pattern[i] == '*':
      out, i = out + '[^/]*', i + 1
    elif pattern[i] == '?':
      out, i = out + '[^/]', i + 1
    else:
      out, i = out + re.escape(pattern[i]), i + 1
  return re.compile(out + '$')


def ignored(path: str, patterns: List[str]) -> bool:
  """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
  parts = path.split('/')
  prefixes = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
  result = False
  for raw in patterns:
    negate = raw.startswith('!')
    regex = _pattern_regex(raw[1:] if negate else raw)
    if any(regex.match(prefix) for prefix in prefixes):
      result = not negate
  return result


def dockerignore_patterns() -> List[str]:
  return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
          if line.strip() and not line.strip().startswith('#')]


def context_files(patterns: Optional[List[str]] = None) -> Set[str]:
  """Files of the build context Docker sends: this checkout as it is, filtered. Folders
  that are excluded and that no `!` pattern reaches into are not walked (as Docker)."""
  patterns = dockerignore_patterns() if patterns is None else patterns
  reopened = [p[1:].strip().lstrip('/') for p in patterns if p.startswith('!')]
  result: Set[str] = set()
  for folder, dirs, names in os.walk(REPO_ROOT):
    relative = os.path.relpath(folder, REPO_ROOT)
    prefix = '' if relative == '.' else relative + '/'
    dirs[:] = [d for d in dirs if not (ignored(prefix + d, patterns) and not any(
        r.startswith(prefix + d) or r.startswith('*') for r in reopened))]
    result.update(prefix + name for name in names if not ignored(prefix + name, patterns))
  return result


def files(dockerfile: str = '', patterns: Optional[List[str]] = None) -> Set[str]:
  """Paths of the files the final stage's plain COPY lines put under WORKDIR, relative
  to it (`COPY --from=...` copies the virtualenv, not the context). By default of
  kubeflow/Dockerfile and its .dockerignore; the arguments replace them."""
  base = workdir(dockerfile).rstrip('/') + '/'
  context = context_files(patterns)
  result: Set[str] = set()
  for op, rest in final_stage(dockerfile):
    if op != 'COPY' or rest.startswith('--from'):
      continue
    *sources, dest = shlex.split(rest)
    target = dest if dest.startswith('/') else base + dest
    for source in sources:
      source = os.path.normpath(source)
      for path in context:
        if path == source:
          copied = os.path.join(target, os.path.basename(path)) if dest.endswith('/') else target
        elif path.startswith(source + '/'):
          copied = os.path.join(target, path[len(source) + 1:])
        else:
          continue
        copied = os.path.normpath(copied)
        if copied.startswith(base):
          result.add(copied[len(base):])
  return result
