"""Client randomness seeded by (seed, round, client): new every round, reproducible."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import reddi
import fedtff
from fedtff import data
from fedtff import compiled
from fedtff.research import sweeps
from fedtff import tasks
from tests import conftest
from tests import test_compiled_runner
from tests import test_experiment


def _rows(dataset):
  """The x rows of a batched dataset, in order, as a list of tuples."""
  return [tuple(np.ravel(row)) for batch in dataset.as_numpy_iterator() for row in batch['x']]


def _indexed_clients(sizes, *, seed=0, shuffle_buffer=100, batch_size=4):
  """A RoundClientData whose rows are their global index, clients of `sizes`."""
  bounds = np.cumsum((0,) + tuple(sizes))
  features = np.arange(bounds[-1], dtype=np.float32)[:, None]
  client_data = data.from_arrays(features, np.zeros(bounds[-1], np.int32),
                                 [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
  spec = data.ClientPreprocessing(batch_size=batch_size, shuffle_buffer=shuffle_buffer)
  return data.RoundClientData(client_data, spec.build(), seed=seed), bounds


def test_the_runners_clients_reshuffle_every_round_and_repeat_for_the_same_round():
  config = test_experiment.small_config()
  train = tasks.build_task(config).train_data
  client = train.client_ids[0]
  first, second = (_rows(train.create_tf_dataset_for_client(client, round_num=r)) for r in (1, 2))
  assert first != second and sorted(first) == sorted(second)
  rebuilt = tasks.build_task(config).train_data  # Another run of the same config.
  assert _rows(rebuilt.create_tf_dataset_for_client(client, round_num=1)) == first
  config.seed = 1
  other_seed = tasks.build_task(config).train_data
  assert _rows(other_seed.create_tf_dataset_for_client(client, round_num=1)) != first


def test_two_clients_of_the_same_size_get_different_permutations():
  client_data, bounds = _indexed_clients((20, 20))
  permutations = [np.asarray(_rows(client_data.create_tf_dataset_for_client(c, round_num=3)))
                  .ravel() - start for c, start in zip(('0', '1'), bounds[:2])]
  assert sorted(permutations[0]) == sorted(permutations[1]) == list(range(20))
  assert list(permutations[0]) != list(permutations[1])


def test_the_key_is_stable_across_processes_and_depends_on_each_input():
  key = data.client_seed(5, 3, 'alice/x').numpy().tolist()
  # Another interpreter with another string-hash salt derives the same key.
  result = subprocess.run(
      [sys.executable, '-c',
       "from fedtff import data; print(data.client_seed(5, 3, 'alice/x').numpy().tolist())"],
      cwd=conftest.REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=conftest.script_env(PYTHONHASHSEED='123'))
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1] == str(key)
  others = [data.client_seed(*args).numpy().tolist()
            for args in [(6, 3, 'alice/x'), (5, 4, 'alice/x'), (5, 3, 'bob')]]
  assert key not in others and len({str(k) for k in others}) == 3


def test_round_tagged_ids_keep_slashes_in_the_client_id():
  assert data.round_client_id(7, 'a/b') == '7/a/b'
  round_num, client_id = data.rounds.parse_round_client_id('7/a/b')
  assert (int(round_num), client_id.numpy().decode()) == (7, 'a/b')
  assert data.round_client_ids(2, ['x', 'y']) == ['2/x', '2/y']
  with pytest.raises(ValueError, match='round_num must be a non-negative int, got -1'):
    data.round_client_id(-1, 'x')
  client_data, _ = _indexed_clients((3,))
  with pytest.raises(ValueError, match="Unknown client id '7'"):
    client_data.create_tf_dataset_for_client('7')


def test_round_batches_are_the_batches_tff_builds_whatever_the_global_seed():
  client_data, _ = _indexed_clients((13, 9), seed=4)
  expected = {}
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:  # As TFF: a graph, no seed.
    for round_num in (1, 2):
      tagged = data.round_client_id(round_num, '0')
      expected[round_num] = session.run(client_data.serializable_dataset_fn(tagged).map(
          lambda batch: batch['x'][:, 0]).unbatch().batch(100).get_single_element())
  assert list(expected[1]) != list(expected[2])
  reader = compiled.RoundBatches(client_data, batch_size=4)
  for global_seed in (0, 7):
    tf.keras.utils.set_random_seed(global_seed)
    for round_num in (1, 2):
      batches = reader.batches(round_num, ['1', '0'])
      own = slice(int(batches.first_batch[1]),
                  int(batches.first_batch[1] + batches.num_batches[1]))
      np.testing.assert_array_equal(
          tf.boolean_mask(batches.data['x'][own][..., 0], batches.mask[own]), expected[round_num])


def test_round_batches_pad_with_headroom_and_never_shrink():
  # Batches of 4: clients of 13 and 9 rows have 4 and 3 batches; 20 rows, 5.
  client_data, _ = _indexed_clients((13, 9, 20, 20, 20))
  reader = compiled.RoundBatches(client_data, batch_size=4)
  padded_count = lambda ids: int(reader.batches(1, ids).mask.shape[0])
  assert padded_count([]) == 2  # An empty cohort: one unused batch, the power of two >= 1.5.
  assert padded_count(['0', '1']) == 16  # 7 batches: the power of two >= 10.5.
  assert padded_count(['1']) == 16  # 3 batches: the shape stays.
  assert padded_count(['2', '3', '4']) == 16  # 15 batches fit: no new shape to compile.
  assert padded_count(['0', '2', '3', '4']) == 32  # 19 outgrow 16: the power of two >= 28.5.


def test_padded_client_data_refuses_round_client_data():
  client_data, _ = _indexed_clients((3, 4))
  with pytest.raises(ValueError, match='use fedtff.compiled.RoundBatches'):
    compiled.PaddedClientData(client_data)
  with pytest.raises(ValueError, match=r"Unknown client ids \['9'\]"):
    compiled.RoundBatches(client_data).batches(1, ['9'])
  with pytest.raises(ValueError, match=r"Expected round-tagged ids .* got \['0', '1/9'\]"):
    compiled.RoundBatches(client_data).tagged_batches(['0', '1/9', '2/1'])


def test_tff_and_fast_engines_give_the_same_rows(tmp_path):
  rows = {}
  for engine in ('tff', 'compiled'):
    config = test_experiment.small_config(engine=engine, total_rounds=3, rounds_per_eval=1)
    fedtff.run_experiment(config, str(tmp_path / engine))
    rows[engine] = test_compiled_runner.rows_of(tmp_path / engine)
  test_compiled_runner.assert_same_rows(rows['tff'], rows['compiled'], tolerance=1e-5)


def test_tffs_dataset_computation_crops_cifar_by_round_as_in_python():
  config = sweeps.point_config(reddi.get_config('cifar100_image:fedavg'), reddi.SMOKE_OVERRIDES)
  train = tasks.build_task(config).train_data
  client = train.client_ids[0]
  built_by_tff = {r: [batch['x'] for batch in train.dataset_computation(
      data.round_client_id(r, client))] for r in (1, 2)}
  in_python = [batch['x'].numpy() for batch in train.create_tf_dataset_for_client(
      client, round_num=1)]
  assert len(built_by_tff[1]) == len(in_python) > 0
  for tff_batch, python_batch in zip(built_by_tff[1], in_python):
    np.testing.assert_array_equal(tff_batch, python_batch)
  assert not np.allclose(built_by_tff[1][0], built_by_tff[2][0])


def test_datasets_are_tffs_eagerly_and_traced_whatever_the_global_seed():
  client_data, _ = _indexed_clients((17,), seed=2)
  tagged = data.round_client_id(5, '0')
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:  # As TFF: a graph, no seed.
    expected = session.run(client_data.serializable_dataset_fn(tagged).map(
        lambda batch: batch['x'][:, 0]).unbatch().batch(100).get_single_element())
  for global_seed in (3, 11):
    tf.random.set_seed(global_seed)
    eager = client_data.create_tf_dataset_for_client('0', round_num=5)
    traced = data.client_dataset_fn(client_data)(tf.constant(tagged))
    for dataset in (eager, traced):
      np.testing.assert_array_equal(np.ravel(_rows(dataset)), expected)
