"""Every config in configs/ (and each of its variants) runs one round.

Configs whose data needs a download list cheap stand-in variants
(`SMOKE_VARIANTS`); FEDTFF_SMOKE_ALL=1 runs every variant for 2 rounds
instead (configs/reddi.py's 30 took 16 min on a shared 2-core machine).
"""

import glob
import importlib.util
import json
import os

import pytest

import fedtff
from fedtff.research import sweeps
from tests import conftest


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SMOKE_ALL = os.environ.get('FEDTFF_SMOKE_ALL') == '1'


def _cases():
  for path in sorted(glob.glob(os.path.join(conftest.REPO_ROOT, 'configs', '*.py'))):
    module = _load(path)
    # Configs whose data needs a download name cheap stand-in variants to smoke-test.
    variants = getattr(module, 'VARIANTS', (None,))
    if not SMOKE_ALL:
      variants = getattr(module, 'SMOKE_VARIANTS', variants)
    for variant in variants:
      yield pytest.param(path, variant, id=os.path.basename(path) + (f':{variant}' if variant else ''))


@pytest.mark.parametrize('path, variant', list(_cases()))
def test_config_runs_one_round(path, variant, tmp_path):
  module = _load(path)
  config = module.get_config(variant) if variant else module.get_config()
  config = sweeps.point_config(config, getattr(module, 'SMOKE_OVERRIDES', {}))
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
