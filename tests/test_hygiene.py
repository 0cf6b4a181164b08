"""The project cites papers and its own files, never a path on someone's machine."""

import ast
import json
import os
import re
import subprocess
import sys

from tests import conftest

# Absolute paths of a developer's machine, and the sibling directories outside
# the repository that such notes lived in. Spelled in pieces so this file does
# not match itself.
MACHINE_PATH = re.compile('|'.join(re.escape(p) for p in (
    '/' + 'work/', '/' + 'home/', '/' + 'root/', '/' + 'Users/', '../' + 'shared')))


def _project_files():
  listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                          cwd=conftest.REPO_ROOT, capture_output=True, text=True, check=True)
  return [path for path in listed.stdout.splitlines()
          if os.path.isfile(os.path.join(conftest.REPO_ROOT, path))]


def test_no_file_cites_a_path_outside_the_repository():
  offending = []
  for path in _project_files():
    with open(os.path.join(conftest.REPO_ROOT, path), 'rb') as f:
      text = f.read().decode('utf-8', errors='replace')
    for number, line in enumerate(text.splitlines(), 1):
      if MACHINE_PATH.search(line):
        offending.append(f'{path}:{number}: {line.strip()}')
  assert not offending, '\n'.join(offending)


# Import cycles. The graph is built statically from the source with `ast`, over
# EVERY import statement in a module: module-level ones and those inside
# functions or classes alike. A function-level import still runs, and moving an
# import into a function is the usual way to hide a cycle, not to remove it.
# Edges: `import fedtff.a.b` and `from fedtff.a import b` (b a module) point at
# fedtff.a.b; `from fedtff.a import name` (name not a module) points at the
# package fedtff.a (its __init__). The implicit import of a module's parent
# packages is not an edge: every module in a package would otherwise form a
# cycle with an __init__ that re-exports it.

PACKAGE = 'fedtff'


def _modules():
  """{dotted module name: path} for every .py file of the package."""
  root = os.path.join(conftest.REPO_ROOT, PACKAGE)
  modules = {}
  for directory, _, files in os.walk(root):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        parts = os.path.relpath(path, conftest.REPO_ROOT)[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts.pop()
        modules['.'.join(parts)] = path
  return modules


def _imported(node, module, is_package, modules):
  """The package's modules that one import statement imports."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names if alias.name in modules]
  if node.level:  # Relative: from the module's own package, up level - 1 more.
    base = module.split('.')[:len(module.split('.')) - node.level + is_package]
    source = '.'.join(base + ([node.module] if node.module else []))
  else:
    source = node.module or ''
  targets = []
  for alias in node.names:
    submodule = f'{source}.{alias.name}'
    if submodule in modules:
      targets.append(submodule)
    elif source in modules:
      targets.append(source)
  return targets


def import_graph():
  """{module: set of the package's modules it imports}, over all import statements."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    graph[module] = {target for node in ast.walk(tree)
                     if isinstance(node, (ast.Import, ast.ImportFrom))
                     for target in _imported(node, module, is_package, modules)
                     if target != module}
  return graph


def _path(graph, start, end, within):
  """A shortest import path from `start` to `end` inside `within` (breadth first)."""
  previous, frontier = {start: None}, [start]
  while frontier:
    following = []
    for node in frontier:
      for target in sorted(graph[node] & within):
        if target not in previous:
          previous[target] = node
          following.append(target)
    frontier = following
  path, node = [], end
  while node is not None:
    path.append(node)
    node = previous[node]
  return path[::-1]


def import_cycles(graph):
  """`(cycle, component)` per strongly connected component: e.g. `(['a', 'b', 'a'], ['a', 'b'])`."""
  reach = {}
  for module in graph:  # Transitive closure by depth-first search: the graph is small.
    seen, stack = set(), list(graph[module])
    while stack:
      node = stack.pop()
      if node not in seen:
        seen.add(node)
        stack.extend(graph[node])
    reach[module] = seen
  cycles, done = [], set()
  for module in sorted(graph):
    if module in reach[module] and module not in done:
      component = {m for m in reach[module] if module in reach[m]}
      done |= component
      target = min(t for t in graph[module] if t in component)
      cycles.append(([module] + _path(graph, target, module, component), sorted(component)))
  return cycles


def test_the_import_graph_finds_a_cycle_hidden_in_a_function():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert import_cycles(graph) == [(['a', 'b', 'c', 'a'], ['a', 'b', 'c'])]
  tree = ast.parse('def f():\n  from fedtff.privacy import mechanisms\n')
  node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
  modules = _modules()
  assert _imported(node, 'fedtff.algorithms.aggregators', False, modules) == ['fedtff.privacy.mechanisms']
  relative = ast.parse('from . import ledger\nfrom ..runner import config').body
  assert _imported(relative[0], 'fedtff.privacy', True, modules) == ['fedtff.privacy.ledger']
  assert _imported(relative[1], 'fedtff.privacy.mechanisms', False, modules) == ['fedtff.runner.config']


def _import_graph_in_a_fresh_process():
  """`import_graph()` computed in a new interpreter: CPython 3.11's `ast.parse`
  keeps its recursion depth in state shared by threads, so a parse can fail
  ("AST constructor recursion depth mismatch") while a thread left by an
  earlier test in this process (TFF's, tracing with AutoGraph) parses too."""
  script = ('import json, sys; sys.path.insert(0, sys.argv[1]); from tests import test_hygiene; '
            'print(json.dumps({m: sorted(t) for m, t in test_hygiene.import_graph().items()}))')
  listed = subprocess.run([sys.executable, '-c', script, conftest.REPO_ROOT],
                          cwd=conftest.REPO_ROOT, capture_output=True, text=True, check=True)
  return {module: set(targets) for module, targets in json.loads(listed.stdout).items()}


def test_the_package_has_no_import_cycles():
  cycles = import_cycles(_import_graph_in_a_fresh_process())
  assert not cycles, 'import cycles in fedtff:\n' + '\n'.join(
      f'{" -> ".join(cycle)} (modules that import each other, directly or not: '
      f'{", ".join(component)})'
      for cycle, component in cycles)
