"""The project cites papers and its own files, never a path on someone's machine."""

import os
import re
import subprocess

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
