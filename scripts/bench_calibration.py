"""DP noise calibration before and after: evaluations and seconds, side by side.

For every configs/quickstart_dp.py variant with a target epsilon, the
one-round Poisson/PLD calibration tests/test_configs_smoke.py runs, and a
Stack Overflow-sized setting (configs/reddi.py's stackoverflow_word: 50 of
342,477 clients per round, 1500 rounds), calibrates the noise multiplier with
the old search (`bench_tools.bisection_noise_multiplier`) and the new
(`noise_multiplier_for_epsilon`), in this order in one process, and prints a
markdown table (docs/privacy.md, "Calibration").

  .venv/bin/python scripts/bench_calibration.py [--skip-stackoverflow]
"""

import argparse
import functools
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
from fedtff import tasks
from fedtff.privacy import accounting
from fedtff.privacy import ddp
from fedtff.privacy import ftrl
from fedtff.research import bench_tools
from fedtff.runner import experiment

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACKOVERFLOW = dict(clients_per_round=50, num_clients=342477, rounds=1500)


def quickstart_cases():
  """(name, target, module, kwargs of module.epsilon / noise_multiplier_for_epsilon)."""
  path = os.path.join(REPO_ROOT, 'configs', 'quickstart_dp.py')
  spec = importlib.util.spec_from_file_location('quickstart_dp', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  task = tasks.build_task(module.get_config('eps8'))
  n, dim = len(task.train_data.client_ids), ddp.model_dim(task.model_fn)
  for variant in module.VARIANTS:
    config = module.get_config(variant)
    target, m, rounds = config.privacy.target_epsilon, config.clients_per_round, config.total_rounds
    if target is None:
      continue
    if config.privacy.mechanism == 'dp_ftrl':
      yield variant, target, ftrl, dict(clients_per_round=m, num_clients=n, rounds=rounds)
    elif config.privacy.mechanism == ddp.MECHANISM:
      yield variant, target, ddp, dict(clients_per_round=m, clip=config.aggregator.clip_norm,
                                       dim=dim, rounds=rounds, delta=accounting.default_delta(n))
    else:
      kwargs = dict(clients_per_round=m, num_clients=n, rounds=rounds,
                    sampling=experiment.ACCOUNTING_SAMPLINGS[config.privacy.sampling],
                    accountant=config.privacy.accountant)
      yield variant, target, accounting, kwargs
      if variant == 'poisson_eps8':
        yield variant + ', 1 round (smoke test)', target, accounting, dict(kwargs, rounds=1)


def stackoverflow_cases():
  yield 'Stack Overflow-sized, fixed, RDP', 8.0, accounting, dict(STACKOVERFLOW)
  yield ('Stack Overflow-sized, Poisson, PLD', 8.0, accounting,
         dict(STACKOVERFLOW, sampling='poisson', accountant='pld'))


def compare(target, module, kwargs):
  """(old, new) `bench_tools.timed_calibration` results."""
  spends = lambda z: module.epsilon(z, **kwargs)
  modules = [accounting, module] if module is not accounting else [accounting]
  old = bench_tools.timed_calibration(
      lambda: bench_tools.bisection_noise_multiplier(spends, target), modules)
  new = bench_tools.timed_calibration(
      functools.partial(module.noise_multiplier_for_epsilon, target, **kwargs), modules)
  return old, new


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--skip-stackoverflow', action='store_true')
  args = parser.parse_args()
  cases = list(quickstart_cases())
  if not args.skip_stackoverflow:
    cases += list(stackoverflow_cases())
  print(bench_tools.machine_line())
  print(bench_tools.markdown_table(
      ('case', 'target epsilon', 'old: evaluations', 'old: s', 'new: evaluations (+ coarse PLD)',
       'new: s', 'speed-up', 'old z', 'new z')), flush=True)
  for name, target, module, kwargs in cases:
    old, new = compare(target, module, kwargs)
    print(bench_tools.markdown_row((
        name, target, old['evaluations'], f"{old['seconds']:.1f}",
        f"{new['evaluations']} (+ {new['pld_guesses']})", f"{new['seconds']:.1f}",
        f"{old['seconds'] / new['seconds']:.1f}x", f"{old['z']:.5f}", f"{new['z']:.5f}")),
          flush=True)


if __name__ == '__main__':
  main()
