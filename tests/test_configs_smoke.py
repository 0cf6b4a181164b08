"""Every config in configs/ (and each of its variants) runs one round.

Configs with many variants list the ones to run (`SMOKE_VARIANTS`): one per
data source, algorithm and batch mode, or for data that needs a download,
cheap stand-ins. Every other variant is validated and its data built here,
without a round. The Reddi et al. stand-ins that tests/test_benchmarks.py runs
for 2 rounds (with more checks) are not run again here.
FEDTFF_SMOKE_ALL=1 runs every variant for 2 rounds instead (configs/reddi.py's
30 took 16 min on a shared 2-core machine).
"""

import glob
import json
import os

import pytest

import fedtff
from fedtff import tasks
from fedtff.research import benchmarks
from fedtff.research import sweeps
from tests import conftest
from tests import test_benchmarks

SMOKE_ALL = os.environ.get('FEDTFF_SMOKE_ALL') == '1'
# Variants another test file runs for more rounds, with this file's checks among its own.
RUN_ELSEWHERE = {'reddi.py': set(test_benchmarks.STANDIN_VARIANTS)}
# Configs whose data needs a download: tests/test_benchmarks.py validates all 30 variants.
VALIDATED_ELSEWHERE = {'reddi.py'}


def _cases(run: bool):
  """(path, variant) of each variant run for a round here (`run`), or of each other one."""
  for path in sorted(glob.glob(os.path.join(conftest.REPO_ROOT, 'configs', '*.py'))):
    name, module = os.path.basename(path), benchmarks.load_config_file(path)
    variants = getattr(module, 'VARIANTS', (None,))
    smoke = variants if SMOKE_ALL else [
        v for v in getattr(module, 'SMOKE_VARIANTS', variants) if v not in RUN_ELSEWHERE.get(name, ())]
    if not run:
      variants = () if name in VALIDATED_ELSEWHERE else [v for v in variants if v not in smoke]
    for variant in (smoke if run else variants):
      yield pytest.param(path, variant, id=name + (f':{variant}' if variant else ''))


def _smoke_config(path, variant):
  module = benchmarks.load_config_file(path)
  config = module.get_config(variant) if variant else module.get_config()
  return sweeps.point_config(config, getattr(module, 'SMOKE_OVERRIDES', {}))


@pytest.mark.parametrize('path, variant', list(_cases(run=True)))
def test_config_runs_one_round(path, variant, tmp_path):
  config = _smoke_config(path, variant)
  config.total_rounds = 2 if SMOKE_ALL else 1
  summary = fedtff.run_experiment(config, str(tmp_path))
  assert summary['rounds_completed'] == config.total_rounds
  if 'privacy' in summary:  # A DP run withholds the client-derived training metrics.
    assert summary['privacy']['rounds'] == config.total_rounds
    assert summary['final']['eval/num_examples'] > 0
  else:
    assert summary['final']['train/num_examples'] > 0
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['total_rounds'] == config.total_rounds


@pytest.mark.parametrize('path, variant', list(_cases(run=False)))
def test_other_variants_validate_and_build_their_data(path, variant):
  config = _smoke_config(path, variant)
  fedtff.runner.config.validate(config)
  task = tasks.build_task(config)
  assert task.train_data.client_ids and task.test_data.client_ids
