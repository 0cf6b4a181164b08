"""Benchmark: seconds per FedAvg round with the masked mean (secure aggregation) vs the plain mean.

Three loopback TFF workers, one per site, each in the run directory its `secagg.SiteMasker` writes
masks to; masked round = the sites write the masks + FedAvg with `masked_mean_factory()`, plain =
FedAvg with TFF's mean; ABBA order after 2 warm-up rounds; medians (docs/cross_silo.md).
  .venv/bin/python scripts/bench_secagg.py [--model tutorial|mlp] [--rounds 10]
"""

import argparse
import contextlib
import datetime
import os
import pathlib
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
import tensorflow_federated as tff
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import fedtff
from fedtff.algorithms import masked_sum, tff_model
from fedtff.execution import distributed, runtime, secagg
from fedtff.research import bench_tools as bt

SITES, NUM_EXAMPLES, BATCH_SIZE, WARMUP = ('alice', 'bob', 'carol'), 100, 20, 2
CLIENTS = [f'client{i}' for i in range(12)]  # 4 per worker.
MODELS = {'tutorial': (bt.tutorial_model, 784), 'mlp': (bt.mlp_model, 64)}


def _pem(name, key, ca_key):
  now, dn = datetime.datetime.now(datetime.timezone.utc), x509.Name.from_rfc4514_string
  return (x509.CertificateBuilder().subject_name(dn(f'CN={name}')).issuer_name(dn('CN=bench-ca'))
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
          .sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def site_maskers(root):
  """The sites' SiteMaskers (credentials from a throwaway CA) and a set-up SecureRounds."""
  root, ca_key = pathlib.Path(root), ec.generate_private_key(ec.SECP256R1())
  (root / 'ca.pem').write_bytes(_pem('bench-ca', ca_key, ca_key))
  for s in SITES:
    key = ec.generate_private_key(ec.SECP256R1())
    (root / f'{s}.pem').write_bytes(_pem(s, key, ca_key))
    (root / f'{s}.key').write_bytes(key.private_bytes(serialization.Encoding.PEM, (
        serialization.PrivateFormat.PKCS8), serialization.NoEncryption()))
    (root / s).mkdir()
  paths = lambda s: [str(root / name) for name in (s, f'{s}.key', f'{s}.pem', 'ca.pem')]
  maskers = {s: secagg.SiteMasker(s, *paths(s)) for s in SITES}
  rounds = secagg.SecureRounds({s: lambda r, m=m: m.control_handlers()[r['op']](r)
                                for s, m in maskers.items()})
  rounds.setup()
  return maskers, rounds


def processes(model_fn, num_features):
  """(plain, masked) FedAvg on clients built from their ids, and the masked mean's streams."""
  synthetic = tff.tensorflow.computation(tf.string)(lambda client_id: bt.generated_examples(
      client_id, NUM_EXAMPLES, num_features).batch(BATCH_SIZE))
  spec = bt.generated_examples(tf.constant('0'), 1, num_features).batch(BATCH_SIZE).element_spec
  factory = masked_sum.masked_mean_factory()
  built = [tff.simulation.compose_dataset_computation_with_learning_process(
      synthetic, fedtff.build_fed_avg(model_fn, spec, model_aggregator=aggregator))
           for aggregator in (None, factory)]
  weights = tff.learning.models.weights_type_from_model(tff_model.tff_model_fn(model_fn, spec))
  return built, masked_sum.mean_stream_lengths(factory, weights.trainable)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', choices=sorted(MODELS), default='tutorial')
  parser.add_argument('--rounds', type=int, default=10)
  args = parser.parse_args()
  (plain, masked), streams = processes(*MODELS[args.model])
  with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
    maskers, rounds = site_maskers(root)
    workers = [runtime.WorkerProcess(cwd=maskers[site].run_dir).start() for site in SITES]
    for worker in workers:
      stack.callback(worker.stop)
    with distributed.remote_runtime([w.address for w in workers]):
      masks = lambda: rounds.prepare_round(streams)
      plain_fn = bt.Stateful(plain.initialize(), lambda s: plain.next(s, CLIENTS).state)
      masked_fn = bt.Stateful(masked.initialize(), lambda s: masked.next(s, CLIENTS).state)
      times = bt.medians(bt.alternate({'plain': plain_fn, 'masks only': masks, 'masked': (
          lambda: (masks(), masked_fn()))}, args.rounds, warmup=WARMUP))
  table = bt.markdown_table(['round', 'median s', 'x plain'], [
      [k, f'{v:.3f}', f'{v / times["plain"]:.2f}'] for k, v in times.items()])
  print(f'{bt.machine_line()}\n{args.model} ({streams["value"] - 1} parameters), {len(CLIENTS)} '
        f'clients x {NUM_EXAMPLES} examples, 3 workers, {args.rounds} rounds each:\n{table}')


if __name__ == '__main__':
  main()
