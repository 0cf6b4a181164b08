"""Benchmark: the compiled engine against TFF and against a hand-written round.

compare: FedAvg on TFF's tutorial workload (Dense 784->10, batch 20, 1 epoch, SGD 0.02, every
client every round) at 10x200, 50x200, 10x2000 clients x examples: median s/round of fedtff TFF
(ids), raw TFF (datasets), compiled with/without XLA and the hand-written limit with/without XLA,
alternating round by round (ABBA) after warm-up. scale: fedtff.run_experiment on each engine at
10, 100, 1000 clients/round of 3,400 (npz_dir), a fresh process each: s/round and RSS. profile:
where a TFF round's time goes. Helpers: fedtff/research/bench_tools.py; results: docs/performance.md.

  .venv/bin/python scripts/bench.py [--mode compare|scale|profile|all] [--rounds 10]
      [--scale_rounds 200]
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
from fedtff.research import bench_tools as bt

tf.get_logger().setLevel('ERROR')  # Each variant builds its own tf.functions: no retracing notes.
WORKLOADS, COHORTS = ((10, 200), (50, 200), (10, 2000)), (10, 100, 1000)


def run_compare(args):
  names = ['fedtff TFF (ids)', 'raw TFF (datasets)', 'compiled (XLA)', 'compiled (no XLA)', 'limit',
           'limit (XLA)']
  print(f'compare: FedAvg, Dense 784->10, batch 20, 1 epoch, SGD 0.02, all clients every round; '
        f'median s/round of {args.rounds} alternating rounds after {args.warmup} warm-up rounds; '
        f'{bt.machine_line()}')
  print(bt.markdown_table(['clients x examples'] + names + ['raw TFF / compiled', 'compiled / best limit']))
  for clients, examples in WORKLOADS:
    data = bt.random_client_data(clients, examples)
    batched = data.preprocess(lambda d: d.batch(bt.TUTORIAL_BATCH_SIZE))
    rounds = [bt.fedtff_tff_round(batched), bt.raw_tff_round(batched),
              bt.compiled_round(batched, jit_compile=True), bt.compiled_round(batched, jit_compile=False),
              bt.limit_round(data, clients, examples, jit_compile=False),
              bt.limit_round(data, clients, examples, jit_compile=True)]
    t = bt.medians(bt.alternate(dict(zip(names, rounds)), args.rounds, warmup=args.warmup))
    print(bt.markdown_row([f'{clients}x{examples}'] + [f'{t[n]:.4f}' for n in names] + [
        f"{t['raw TFF (datasets)'] / t['compiled (XLA)']:.1f}x",
        f"{t['compiled (XLA)'] / min(t['limit'], t['limit (XLA)']):.2f}"]), flush=True)
  print(f'targets: raw TFF / compiled >= 30x at 10x200; compiled / best limit <= 1.5 at every size; '
        f'load average at the end {os.getloadavg()[0]:.1f}')


def run_scale(args):
  print(f'scale: fedtff.run_experiment, FedAvgM, MLP 64->64->10, batch 10, clients of '
        f'{bt.SCALE_EXAMPLES} examples sampled from {bt.SCALE_POPULATION} (npz_dir); median s/round '
        'after the first round; RSS = Python + TFF worker, after round 2 and before the last round '
        f'(its evaluation), and the peak over the run; {bt.machine_line()}')
  print(bt.markdown_table(bt.SCALE_HEADER))
  t = {'tff': {}, 'compiled': {}}
  with tempfile.TemporaryDirectory() as data_dir:
    bt.write_npz_population(data_dir, bt.SCALE_POPULATION + bt.SCALE_TEST_CLIENTS, bt.SCALE_EXAMPLES)
    for cohort in COHORTS:
      for engine in t:
        rounds = bt.scale_rounds(engine, cohort, args.scale_rounds)
        r = bt.run_in_subprocess('scale_run', engine, cohort, rounds, data_dir)
        t[engine][cohort] = r['median_s']
        print(bt.scale_row(cohort, engine, rounds, r), flush=True)
  print('\nmarginal cost of a client (ms per added client per round, from the medians); '
        'linear growth means the two columns agree:')
  marginal = {b: [1000 * (c[h] - c[l]) / (h - l) for l, h in zip(COHORTS, COHORTS[1:])]
              for b, c in t.items()}
  print(bt.markdown_table(['engine', '10 -> 100 clients', '100 -> 1000 clients', 'ratio'], [
      [b, f'{lo:.3f}', f'{hi:.3f}', f'{hi / lo:.2f}'] for b, (lo, hi) in marginal.items()]))
  print('\ntff / compiled, median s/round: ' + ', '.join(
      f"{c} clients {t['tff'][c] / t['compiled'][c]:.0f}x" for c in COHORTS))


def run_profile(args):
  timer, columns = bt.StepTimer(), {}
  print(f'profile: {bt.machine_line()}; where a TFF round goes, FedAvg, Dense 784->10 '
        f'(s/round, mean of {args.rounds} rounds after {args.warmup} warm-up)')
  for clients, examples in (WORKLOADS[0], WORKLOADS[2]):
    batched = bt.random_client_data(clients, examples).preprocess(lambda d: d.batch(20))
    for name, make in (('raw TFF', bt.raw_tff_round), ('fedtff TFF (ids)', bt.fedtff_tff_round)):
      columns[f'{clients}x{examples} {name}'] = timer.profile(make(batched), args.rounds, args.warmup)
  steps = list(dict.fromkeys(s for c in columns.values() for s in c if s != 'total')) + ['total']
  print(bt.markdown_table(['step'] + list(columns), [
      [s] + [f'{c.get(s, 0.0):.4f}' for c in columns.values()] for s in steps]))


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  modes = {'compare': run_compare, 'scale': run_scale, 'profile': run_profile}
  parser.add_argument('--mode', choices=list(modes) + ['all'], default='compare')
  parser.add_argument('--rounds', type=int, default=10, help='timed rounds per variant')
  parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
  parser.add_argument('--scale_rounds', type=int, default=200,
                      help='scale: rounds on compiled, and on TFF at 10 clients/round')
  args = parser.parse_args()
  for mode, run in modes.items():
    if args.mode in (mode, 'all'):
      run(args)
