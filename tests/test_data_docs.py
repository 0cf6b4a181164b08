"""docs/data.md: its Python blocks run, and fedtff.data exports what it documents."""

import os
import re

from fedtff import data
from tests import conftest

with open(os.path.join(conftest.REPO_ROOT, 'docs', 'data.md')) as f:
  DOC = f.read()
BLOCKS = re.findall(r'```python\n(.*?)```', DOC, re.S)


def test_docs_python_blocks_run_offline(tmp_path):
  assert len(BLOCKS) >= 6
  script = tmp_path / 'blocks.py'
  script.write_text('\n'.join(BLOCKS))
  result = conftest.run_script([str(script)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "TFF dataset 'cifar100' is not cached: expected cifar100.sqlite in /nonexistent" in result.stdout


def test_every_documented_call_is_exported():
  not_fedtff = {'argmax', 'build', 'create_tf_dataset_for_client', 'floor', 'generate_synthetic',
                'get_synthetic', 'int', 'load_and_parse_sql_client_data', 'load_data',
                'load_word_counts', 'save_to_sql_client_data'}
  documented = set(re.findall(r'`([a-z_]+)\(', DOC)) - not_fedtff
  assert documented and documented <= set(dir(data)), documented - set(dir(data))
  assert {'ClientPreprocessing', 'FederatedArrays', 'Split', 'SyntheticData',
          'DatasetNotCachedError', 'TFF_DATASETS'} <= set(dir(data))
