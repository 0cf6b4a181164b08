"""Benchmark: the quickstart over three sites that own their data vs on one machine (docs/cross_silo.md).

Exports configs/quickstart.py to alice, bob and carol (`fedtff.execution.site_data`), starts
each as a `fedtff.execution.sites.PlainSite` on loopback, runs the quickstart for --rounds
rounds (evaluated at the last) with `runtime.sites` and locally on the TFF engine, and prints
the median seconds of rounds 2 to --rounds - 1, the final eval/accuracy of both, and the size of
the serialized round the trainer sends next to the size of the sites' examples.

  .venv/bin/python scripts/bench_sites.py [--rounds 10]
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_federated as tff

from fedtff.execution import site_data
from fedtff.execution import sites
from fedtff.runner import experiment

SITES = ('alice', 'bob', 'carol')


def quickstart(rounds, specs=()):
  config = site_data.load_config(os.path.join(REPO, 'configs', 'quickstart.py'))
  config.total_rounds = rounds
  config.rounds_per_eval = rounds
  config.output.tensorboard = False
  config.engine = 'tff'
  config.runtime.sites = tuple(specs)
  return config


def run(config):
  rows = []
  experiment.run_experiment(config, tempfile.mkdtemp(), progress_fn=rows.append)
  return statistics.median(r['round_time_s'] for r in rows[1:-1]), rows[-1]['eval/accuracy']


def round_bytes(config, specs):
  task = site_data.site_task(config, sites.federation(specs))
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      task.train_data.dataset_computation, experiment.build_process(config, task))
  return len(tff.framework.ConcreteComputation.get_proto(process.next).SerializeToString())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=10)
  rounds = parser.parse_args().rounds
  out = tempfile.mkdtemp()
  site_data.export_sites(quickstart(rounds), out, SITES)
  plain = [sites.PlainSite(os.path.join(out, name)).start() for name in SITES]
  try:
    specs = [site.spec for site in plain]
    for name, config in (('one machine (tff)', quickstart(rounds)),
                         ('3 sites', quickstart(rounds, specs))):
      seconds, accuracy = run(config)
      print(f'{name}: median {seconds:.3f} s/round, eval/accuracy {accuracy:.4f}')
    examples = sum(os.path.getsize(os.path.join(out, n, site_data.EXAMPLES)) for n in SITES)
    print(f'serialized round: {round_bytes(quickstart(rounds), specs)} bytes; the sites\' '
          f'clients.sqlite: {examples} bytes')
  finally:
    for site in plain:
      site.stop()


if __name__ == '__main__':
  main()
