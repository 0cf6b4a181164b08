"""Benchmark: the quickstart's cost per round on sites next to the plain remote runtime.

Runs configs/quickstart.py (--rounds rounds, evaluated at the last) on the TFF engine four ways,
one run of each in turn (A B C D, A B C D, ... --repeats times), all on loopback:
  (a) the plain remote runtime: `runtime.workers`, three `python -m fedtff.execution.worker`;
  (b) three plain sites (`sites.PlainSite`, data exported by `site_data`), no TLS;
  (c) three TLS sites (`python -m fedtff.execution.site`), `runtime.secure_aggregation=False`;
  (d) the same TLS sites with secure aggregation.
Prints the median seconds of rounds 2 to --rounds - 1 (pooled over the repeats), the ratio to
(a), the final eval/accuracy and the round's size (docs/cross_silo.md). Needs root (namespaces).

  sudo .venv/bin/python scripts/bench_sites.py [--rounds 8] [--repeats 2]
"""

import argparse
import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
import portpicker

from fedtff.execution import certs
from fedtff.execution import site_data
from fedtff.execution import sites
from fedtff.research import bench_tools as bt
from fedtff.runner import experiment

SITES = ('alice', 'bob', 'carol')


def quickstart(rounds, **runtime):
  config = site_data.load_config(os.path.join(REPO, 'configs', 'quickstart.py'))
  config.total_rounds = config.rounds_per_eval = rounds
  config.output.tensorboard = False
  config.engine = 'tff'
  config.runtime.secure_aggregation = False
  config.runtime.update(runtime)
  return config


def run(config, root):
  """(Seconds of rounds 2 to N - 1, the last round's eval/accuracy)."""
  rows = []
  experiment.run_experiment(config, tempfile.mkdtemp(dir=root), progress_fn=rows.append)
  return [r['round_time_s'] for r in rows[1:-1]], rows[-1]['eval/accuracy']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=8, help='Rounds per run, at least 3.')
  parser.add_argument('--repeats', type=int, default=2, help='Runs of each way.')
  args = parser.parse_args()
  print(bt.machine_line())
  root = tempfile.mkdtemp(prefix='bench-sites-')
  data = os.path.join(root, 'data')
  site_data.export_sites(quickstart(args.rounds), data, SITES)
  creds = certs.create_federation(os.path.join(root, 'certs'), list(SITES), ['trainer'])
  ports = [portpicker.pick_unused_port() for _ in range(6)]
  workers = [('fedtff.execution.worker', f'--port={p}') for p in ports[:3]]
  tls_sites = [('fedtff.execution.site', f'--site={name}', f'--data={data}/{name}',
                f'--port={p}', f'--credentials={creds[name]}') for name, p in zip(SITES, ports[3:])]
  tls_specs = tuple(f'{name}=127.0.0.1:{p}' for name, p in zip(SITES, ports[3:]))
  plain = [sites.PlainSite(os.path.join(data, name)).start() for name in SITES]
  try:
    with bt.listening_servers(workers + tls_sites, root):
      ways = {
          '(a) plain remote runtime': dict(workers=tuple(f'127.0.0.1:{p}' for p in ports[:3])),
          '(b) 3 plain sites': dict(sites=tuple(site.spec for site in plain)),
          '(c) 3 TLS sites': dict(sites=tls_specs, credentials=creds['trainer']),
          '(d) 3 TLS sites + secure aggregation': dict(
              sites=tls_specs, credentials=creds['trainer'], secure_aggregation=True)}
      times, accuracy = {name: [] for name in ways}, {}
      for _ in range(args.repeats):
        for name, runtime in ways.items():
          seconds, accuracy[name] = run(quickstart(args.rounds, **runtime), root)
          times[name] += seconds
    round_size = bt.site_round_bytes(quickstart(args.rounds), ways['(b) 3 plain sites']['sites'])
  finally:
    for site in plain:
      site.stop()
  medians = bt.medians(times)
  base = medians['(a) plain remote runtime']
  print(bt.markdown_table(
      ['runtime', f'median s/round (rounds 2-{args.rounds - 1})', 'ratio to (a)',
       f'eval/accuracy at round {args.rounds}'],
      [(name, f'{medians[name]:.3f}', f'{medians[name] / base:.2f}', f'{accuracy[name]:.4f}')
       for name in ways]))
  examples = sum(os.path.getsize(os.path.join(data, n, site_data.EXAMPLES)) for n in SITES)
  shutil.rmtree(root)
  print(f'serialized round: {round_size} bytes; the sites\' clients.sqlite: {examples} bytes; '
        f'load average at end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
