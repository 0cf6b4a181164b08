"""The default trainer step of scripts/cross_silo_demo.sh (docs/cross_silo.md, "The demo").

Trains the quickstart (--rounds rounds, evaluated at the last) with experiments/train.py on the TFF
engine over the sites in $FEDTFF_SITES with $FEDTFF_CREDENTIALS (mutual TLS, secure aggregation),
capturing every TCP stream on --bridge, then on this machine alone. PASS (else FAIL, exit 1): all
metrics rows agree within 1e-5 (timing columns aside), and the complete capture holds no copy of
the float32 bytes of the first site's first training example (in its clients.sqlite: a control)."""

import argparse
import os
import sqlite3
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

from fedtff.execution import capture
from fedtff.execution import site_data
from fedtff.runner import outputs

TIMING, TOLERANCE = ('round_time_s', 'examples_per_s'), 1e-5


def needle(site_dir):
  """(client id, float32 bytes of its first training example's features) of a site."""
  manifest = site_data.read_manifest(site_dir)
  client = manifest['train_client_ids'][0]
  with sqlite3.connect(os.path.join(site_dir, site_data.EXAMPLES)) as db:
    (serialized,) = db.execute(
        'SELECT serialized_example_proto FROM examples WHERE client_id = ? AND '
        "split_name = 'train' ORDER BY rowid LIMIT 1", (client,)).fetchone()
  feature = tf.train.Example.FromString(serialized).features.feature['x']
  return client, np.asarray(feature.float_list.value, np.float32).tobytes()


def train(workdir, rounds, *overrides):
  """The metrics rows of experiments/train.py on the quickstart."""
  subprocess.run(
      [sys.executable, 'experiments/train.py', '--config=configs/quickstart.py',
       f'--workdir={workdir}', '--quiet', '--config.engine=tff',
       f'--config.total_rounds={rounds}', f'--config.rounds_per_eval={rounds}',
       '--config.output.tensorboard=False', *overrides], cwd=REPO, check=True)
  return outputs.read_metrics_jsonl(os.path.join(workdir, 'metrics.jsonl'))


def largest_difference(rows, expected):
  """Largest |a - b| / (1 + |b|) over every non-timing cell; inf if the rows differ in shape."""
  if [r['round'] for r in rows] != [r['round'] for r in expected]:
    return float('inf')
  worst = 0.0
  for row, want in zip(rows, expected):
    if row.keys() != want.keys():
      return float('inf')
    for key in row.keys() - set(TIMING):
      if (row[key] is None) != (want[key] is None):
        return float('inf')
      if row[key] is not None:
        worst = max(worst, abs(row[key] - want[key]) / (1.0 + abs(want[key])))
  return worst


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--bridge', required=True, help='The interface the sites are reached on.')
  parser.add_argument('--data', required=True, help='The directory holding <site>/ data dirs.')
  parser.add_argument('--workdir', required=True, help='Where the two runs write.')
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  sites = os.environ['FEDTFF_SITES'].split(',')
  first = sites[0].split('=')[0]  # alice, by default.
  client, canary = needle(os.path.join(args.data, first))
  with open(os.path.join(args.data, first, site_data.EXAMPLES), 'rb') as f:
    on_disk = canary in f.read()
  print(f'needle: the {len(canary)} bytes of client {client}\'s first example at {first} '
        f'(found in {first}\'s clients.sqlite: {on_disk})')
  with capture.TrafficCapture(args.bridge) as seen:
    federated = train(os.path.join(args.workdir, 'sites'), args.rounds,
                      f'--config.runtime.sites={tuple(sites)!r}',
                      f'--config.runtime.credentials={os.environ["FEDTFF_CREDENTIALS"]}')
  local = train(os.path.join(args.workdir, 'local'), args.rounds)
  difference = largest_difference(federated, local)
  rows_ok, leak = difference <= TOLERANCE, seen.contains(canary)
  print(f'rows: {len(federated)} over the sites, {len(local)} local; largest difference '
        f'{difference:.2e} (tolerance {TOLERANCE:g}); final eval/accuracy '
        f'{federated[-1].get("eval/accuracy")} vs {local[-1].get("eval/accuracy")}')
  print(f'capture on {args.bridge}: {seen.total_bytes()} bytes in {len(seen.streams())} '
        f'streams, {seen.gaps()} gaps; needle present: {leak}')
  passed = rows_ok and on_disk and not leak and seen.gaps() == 0 and seen.total_bytes() > 0
  print(f'{"PASS" if passed else "FAIL"}: {len(sites)} TLS sites with secure aggregation '
        f'{"equal" if rows_ok else "DIFFER FROM"} the local rows; the needle '
        f'{"crossed" if leak else "did not cross"} {args.bridge}')
  return 0 if passed else 1


if __name__ == '__main__':
  sys.exit(main())
