"""Every Python block in README.md runs as written, in a fresh interpreter."""

import os
import re

import pytest

from tests import conftest

with open(os.path.join(conftest.REPO_ROOT, 'README.md')) as f:
  README_BLOCKS = re.findall(r'```python\n(.*?)```', f.read(), re.S)


def test_readme_has_python_blocks():
  assert len(README_BLOCKS) >= 2


@pytest.mark.parametrize('block', README_BLOCKS, ids=[f'block{i}' for i in range(len(README_BLOCKS))])
def test_readme_block_runs(block, tmp_path):
  script = tmp_path / 'block.py'
  script.write_text(block)
  result = conftest.run_script([str(script)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip(), 'the block printed nothing'
  if 'equal rows:' in block:  # A block that compares rows must find them equal.
    assert 'equal rows: True' in result.stdout, result.stdout
