"""Measures the per-client state store's memory and disk cost for SCAFFOLD's control variate.

The state is the quickstart model's control variate (configs/quickstart.py:
MLP 64-64-10 on the 8x8 digits, one float32 per trainable weight). For each
population (3,400 clients; 342,477, Stack Overflow's training clients) and each
store (in memory, on disk), it creates the store, then runs `--rounds` rounds
of `--clients` sampled clients (gather, put back, journal and apply every
round, as the runner does with `rounds_per_checkpoint=1`), and prints:
the nominal size of all rows (N x state x 4 bytes), the process's resident
memory growth, the bytes the store's files occupy on disk (allocated blocks)
and their apparent size, and the milliseconds per round.

  .venv/bin/python scripts/bench_client_states.py [--rounds 100] [--clients 10]
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from fedtff.runner import client_states

POPULATIONS = (3_400, 342_477)


def quickstart_state_size() -> int:
  """Trainable float32 values of the quickstart model (one control variate)."""
  import fedtff  # TensorFlow: imported only here.
  model = fedtff.models.mlp((64,), 10, hidden_units=(64,))
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * resource.getpagesize()


def apparent_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def measure(num_clients: int, state_size: int, on_disk: bool, rounds: int, clients: int):
  directory = tempfile.mkdtemp(prefix='client_states_')
  try:
    before = rss_bytes()
    ids = [f'client_{i}' for i in range(num_clients)]
    store = client_states.ClientStateStore(directory, ids, state_size, on_disk=on_disk)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for round_num in range(1, rounds + 1):
      chosen = [ids[i] for i in rng.choice(num_clients, size=clients, replace=False)]
      store.put(chosen, store.get(chosen) + rng.normal(size=(clients, state_size)))
      store.save(round_num)
      store.prune([round_num - 1, round_num])
    per_round_ms = (time.perf_counter() - start) / rounds * 1e3
    return dict(nominal=num_clients * state_size * 4, rss=rss_bytes() - before,
                disk=store.disk_bytes(), apparent=apparent_bytes(directory),
                journals=len(store.journals()), ms=per_round_ms)
  finally:
    shutil.rmtree(directory)


def mib(value: int) -> str:
  return f'{value / 2**20:,.1f} MiB'


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=100)
  parser.add_argument('--clients', type=int, default=10)
  args = parser.parse_args(argv)
  state_size = quickstart_state_size()
  print(f'state: {state_size} float32 ({state_size * 4:,} bytes) per client; {args.rounds} '
        f'rounds x {args.clients} clients, journal + apply every round')
  print('| clients | store | all rows (nominal) | resident memory growth | on disk (allocated) '
        '| on disk (apparent) | journals kept | ms per round |')
  print('|---|---|---|---|---|---|---|---|')
  for num_clients in POPULATIONS:
    for on_disk in (False, True):
      m = measure(num_clients, state_size, on_disk, args.rounds, args.clients)
      print(f"| {num_clients:,} | {'disk' if on_disk else 'memory'} | {mib(m['nominal'])} | "
            f"{mib(m['rss'])} | {mib(m['disk'])} | {mib(m['apparent'])} | {m['journals']} | "
            f"{m['ms']:.1f} |")


if __name__ == '__main__':
  main(sys.argv[1:])
