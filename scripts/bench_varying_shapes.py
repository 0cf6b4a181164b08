"""Benchmark: compiled rounds on sequences of varying length vs the same sequences at one length.

  .venv/bin/python scripts/bench_varying_shapes.py --rounds 20

FedAvg on the compiled engine (docs/performance.md) over --clients clients of --examples token
sequences of 1 to --max-length tokens, batched by `padded_batch` (each batch as long as its
longest sequence: varying shapes, so no XLA) or padded to --max-length (fixed shape; with and
without XLA). The model (Embedding with mask_zero, GlobalAveragePooling1D, Dense) skips the
padding, so all three reach the same weights, which is checked. Rounds alternate between the
three (rotating order); prints the median s/round of each and the ratios.
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import compiled
from fedtff.research import bench_tools as bt

VOCAB, NUM_CLASSES = 100, 5


def model_fn():
  return tf.keras.Sequential([
      tf.keras.Input([None], dtype=tf.int32),
      tf.keras.layers.Embedding(VOCAB, 16, mask_zero=True),
      tf.keras.layers.GlobalAveragePooling1D(),
      tf.keras.layers.Dense(NUM_CLASSES)])


def client_data(args, padded_length):
  """The clients' sequences, batched to each batch's longest or to `padded_length`."""
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, args.max_length + 1, args.clients * args.examples)
  tokens = [rng.integers(1, VOCAB, n) for n in lengths]
  every = tf.data.Dataset.from_tensor_slices((
      tf.repeat(tf.range(args.clients), args.examples), tf.ragged.constant(tokens, tf.int32),
      tf.constant([t[0] % NUM_CLASSES for t in tokens], tf.int32)))

  def dataset_fn(client_id):
    owned = every.filter(lambda k, x, y: tf.equal(tf.strings.as_string(k), client_id))
    return owned.map(lambda k, x, y: (x.to_tensor() if isinstance(x, tf.RaggedTensor) else x, y)
                    ).padded_batch(args.batch_size, padded_shapes=([padded_length], []))

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      [str(k) for k in range(args.clients)], dataset_fn)


def round_fn(data, jit_compile, weights):
  process = compiled.build_compiled_process(
      model_fn, data.element_type_structure, jit_compile=jit_compile,
      client_optimizer=fedtff.build_optimizer('sgd', 0.5))
  batches = compiled.PaddedClientData(data).batches(data.client_ids)
  state = process.set_model_weights(process.initialize(), weights)
  step = bt.Stateful(state, lambda s: process.next(s, batches).state)
  step.weights = lambda: process.get_model_weights(step.state)
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clients', type=int, default=10)
  parser.add_argument('--examples', type=int, default=64)
  parser.add_argument('--max-length', type=int, default=80)
  parser.add_argument('--batch-size', type=int, default=16)
  parser.add_argument('--rounds', type=int, default=20)
  args = parser.parse_args()
  print(bt.machine_line())
  model = model_fn()
  weights = tff.learning.models.ModelWeights([v.numpy() for v in model.trainable_variables], [])
  fns = {'varying (no XLA)': round_fn(client_data(args, None), None, weights),
         'fixed, XLA': round_fn(client_data(args, args.max_length), None, weights),
         'fixed, no XLA': round_fn(client_data(args, args.max_length), False, weights)}
  medians = bt.medians(bt.alternate(fns, args.rounds, warmup=1, order='rotate'))
  print(bt.markdown_table(['batches', 's/round (median)', 'vs fixed, XLA'],
                          [[name, f'{s:.4f}', f'{s / medians["fixed, XLA"]:.2f}x']
                           for name, s in medians.items()]))
  final = [fn.weights() for fn in fns.values()]
  print(f'max |weight difference| after {args.rounds + 1} rounds: '
        f'{max(bt.max_abs_difference(final[0].trainable, w.trainable) for w in final[1:]):.2e}')


if __name__ == '__main__':
  main()
