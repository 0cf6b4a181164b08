"""Benchmark: seconds from starting a local TFF worker until its gRPC channel is ready.

Alternates (ABBA) fedtff's channel options (`runtime.GRPC_CHANNEL_OPTIONS`,
first reconnect after 0.1 s) with the same options minus the reconnect
backoff (gRPC's default: first reconnect after 1 s). Every TFF-engine run
(`run_experiment` with `engine='tff'`, `fedtff.local_runtime()`) and every
site's worker pays this once. Prints the median of each and their ratio.

  .venv/bin/python scripts/bench_worker_start.py [--starts 8]
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import grpc
import tensorflow_federated as tff

from fedtff.execution import runtime
from fedtff.research import bench_tools as bt

GRPC_DEFAULT_BACKOFF = tuple(option for option in runtime.GRPC_CHANNEL_OPTIONS
                             if 'reconnect_backoff' not in option[0])


OPTIONS = {'fedtff (first reconnect 0.1 s)': runtime.GRPC_CHANNEL_OPTIONS,
           "gRPC's default (first reconnect 1 s)": GRPC_DEFAULT_BACKOFF}


def seconds_to_ready(options) -> float:
  """Starts a worker and returns the seconds until its channel is ready; stops it, untimed."""
  worker = runtime.WorkerProcess()
  began = time.perf_counter()
  worker.start()
  channel = grpc.insecure_channel(worker.address, options)
  try:
    runtime.wait_until_ready(tff.framework.RemoteExecutorGrpcStub(channel), worker.address, 60.0)
    return time.perf_counter() - began
  finally:
    channel.close()
    worker.stop()


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--starts', type=int, default=8)
  args = parser.parse_args(argv)
  ready = {name: [] for name in OPTIONS}
  bt.alternate({name: lambda name=name: ready[name].append(seconds_to_ready(OPTIONS[name]))
                for name in OPTIONS}, args.starts, warmup=1)
  print(bt.machine_line())
  medians = bt.medians({name: seconds[1:] for name, seconds in ready.items()})  # No warmup.
  for name, median in medians.items():
    print(f'{name:<38} median {median:.3f} s to ready over {args.starts} starts')
  fedtff_s, default_s = medians.values()
  print(f'ratio fedtff / default: {fedtff_s / default_s:.3f}')


if __name__ == '__main__':
  main(sys.argv[1:])
