"""Benchmark: the cost of a site's mutual TLS and relay per round (docs/cross_silo.md).

Starts a test CA, one site (`python -m fedtff.execution.site`: worker_binary in a private network
namespace behind the TLS front end) and a plain `worker_binary` on loopback, then times the same
computations on both, alternating, after warm-up rounds:
  * a FedAvg round (Dense 784->10, clients built on the worker, as scripts/bench_distributed.py);
  * a round trip of a --payload_mib float32 tensor (the relay's throughput).
Prints medians and the TLS/plain ratio. Needs root (network namespaces).

  sudo .venv/bin/python scripts/bench_cross_silo.py [--clients 50] [--rounds 10]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import portpicker
import tensorflow_federated as tff

from fedtff.execution import certs
from fedtff.execution import distributed
from fedtff.execution import runtime
from fedtff.execution import tls
from fedtff.research import bench_tools as bt
from scripts import bench_distributed

WARMUP_ROUNDS = 2


def start_site(root: str) -> tuple:
  """A site `alice` on a free port, with a fresh test CA; returns (process, address, trainer)."""
  creds = certs.create_federation(os.path.join(root, 'certs'), ['alice'], ['trainer'])
  os.mkdir(os.path.join(root, 'data'))
  port, log_path = portpicker.pick_unused_port(), os.path.join(root, 'site.log')
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'fedtff.execution.site', '--site=alice', f'--port={port}',
         f'--data={root}/data', f'--credentials={creds["alice"]}'], stderr=log,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  while 'listening on' not in open(log_path).read():
    if proc.poll() is not None:
      sys.exit(f'bench_cross_silo.py: error: the site exited: {open(log_path).read()}')
    time.sleep(0.2)
  return proc, f'127.0.0.1:{port}', tls.TrainerCredentials.load(creds['trainer'])


def round_fns(context, num_clients: int, payload_mib: float) -> dict:
  """`{name: round function}` running in `context`."""
  process = bench_distributed.composed_process()
  fedavg = bench_distributed.runtime_round(context, process, [f'c{i}' for i in range(num_clients)])
  payload = np.ones(int(payload_mib * 2**20 / 4), np.float32)
  echo = tff.tensorflow.computation(lambda x: x + 1.0, tff.TensorType(np.float32, payload.shape))

  def round_trip():
    with tff.framework.get_context_stack().install(context):
      echo(payload)

  return {f'FedAvg round, {num_clients} clients': fedavg, f'{payload_mib:g} MiB echo': round_trip}


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clients', type=int, default=50, help='Clients per round.')
  parser.add_argument('--rounds', type=int, default=10, help='Timed rounds per configuration.')
  parser.add_argument('--payload_mib', type=float, default=16.0)
  args = parser.parse_args(argv)
  print(bt.machine_line())
  with tempfile.TemporaryDirectory() as root:
    site, address, trainer = start_site(root)
    plain = runtime.WorkerProcess().start()
    try:
      with tls.secure_runtime(trainer, {'alice': address}, connect_timeout_s=60) as secure, \
           distributed.remote_runtime([plain.address], connect_timeout_s=60) as insecure:
        runs = {}
        for label, context in (('TLS site', secure), ('plain worker', insecure)):
          runs.update({(name, label): fn for name, fn in
                       round_fns(context, args.clients, args.payload_mib).items()})
        times = bt.medians(bt.alternate(runs, args.rounds, warmup=WARMUP_ROUNDS))
    finally:
      plain.stop()
      site.terminate()
      site.wait(30)
  rows = [(name, f'{times[(name, "plain worker")]:.3f}', f'{times[(name, "TLS site")]:.3f}',
           f'{times[(name, "TLS site")] / times[(name, "plain worker")]:.2f}')
          for name in dict.fromkeys(name for name, _ in runs)]
  print(bt.markdown_table(['computation', 'plain worker, median s', 'TLS site, median s',
                           'ratio'], rows))
  print(f'load average at end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main(sys.argv[1:])
