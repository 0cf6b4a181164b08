"""Every Python block in docs/research.md runs as written, in a fresh interpreter."""

import json
import os
import re

import pytest

from tests import conftest

with open(os.path.join(conftest.REPO_ROOT, 'docs', 'research.md')) as f:
  BLOCKS = re.findall(r'```python\n(.*?)```', f.read(), re.S)


def test_research_doc_has_the_algorithm_and_the_round_loop():
  assert len(BLOCKS) == 2


def run(block, tmp_path):
  script = tmp_path / 'block.py'
  script.write_text(block)
  result = conftest.run_script([str(script)])
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip().splitlines()


def test_own_algorithm_block_runs_three_rounds(tmp_path):
  last = run(BLOCKS[0], tmp_path)[-1].split()
  assert last[0] == '3' and 0.0 <= float(last[1]) <= 1.0


def test_own_round_loop_block_writes_the_runner_files_and_resumes(tmp_path):
  lines = run(BLOCKS[1], tmp_path)
  assert [l.split()[1] for l in lines if l.startswith('round ')] == ['1/2', '2/2', '3/4', '4/4']
  files = json.loads(lines[-2].replace("'", '"'))
  assert files == ['.lock', 'checkpoints', 'metrics.csv', 'metrics.jsonl', 'privacy_ledger.json',
                   'summary.json', 'tensorboard']
  assert lines[-1].startswith('epsilon after 4 rounds: ')
