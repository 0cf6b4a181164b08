"""Splits: held-out clients, per-client holdout, both; on arrays and on ClientData."""

import numpy as np
import pytest

from fedtff import data


def _arrays(sizes=(10, 5, 8, 7)):
  total = sum(sizes)
  bounds = np.cumsum((0,) + tuple(sizes))
  return data.FederatedArrays(np.arange(total, dtype=np.float32).reshape(total, 1),
                              np.arange(total) % 3,
                              [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])],
                              ['a', 'b', 'c', 'd'])


def _ys(client_data, client_id):
  return [int(e['y']) for e in client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator()]


def test_split_client_ids_is_seeded_and_keeps_order():
  ids = [str(k) for k in range(10)]
  kept, heldout = data.split_client_ids(ids, 3, seed=0)
  assert (kept, heldout) == data.split_client_ids(ids, 3, seed=0)
  assert len(heldout) == 3 and sorted(kept + heldout, key=int) == ids
  assert kept == sorted(kept, key=int) and heldout == sorted(heldout, key=int)
  with pytest.raises(ValueError, match=r'num_heldout must be in \[0, 9\]'):
    data.split_client_ids(ids, 10, seed=0)


def test_holdout_examples_takes_the_tail_of_each_client():
  train, test = data.holdout_examples([np.arange(10), np.arange(10, 15)], 0.2)
  assert [a.tolist() for a in train] == [list(range(8)), [10, 11, 12, 13]]
  assert [a.tolist() for a in test] == [[8, 9], [14]]
  train, _ = data.holdout_examples([np.arange(10)], 0.3)
  assert len(train[0]) == 7  # Not 6: 10 * (1 - 0.3) is 6.9999... in floats.


def test_holdout_examples_rejects_empty_clients_unless_allowed():
  with pytest.raises(ValueError, match='Client 1 has no training examples after holding out 0.5 of its 1'):
    data.holdout_examples([np.arange(20), np.arange(1)], 0.5)
  train, test = data.holdout_examples([np.arange(3), np.arange(1)], 0.1, allow_empty=True)
  assert [len(a) for a in train] == [2, 0] and [len(a) for a in test] == [1, 1]
  with pytest.raises(ValueError, match=r'test_fraction must be in \(0, 1\)'):
    data.holdout_examples([np.arange(3)], 1.0)


def test_split_holds_out_clients_and_examples():
  parts = data.split(_arrays(), seed=1, num_heldout_clients=1, test_fraction=0.2)
  heldout_id, = parts.heldout.client_ids
  kept = [c for c in 'abcd' if c != heldout_id]
  assert parts.train.client_ids == parts.test.client_ids == kept
  for client_id in kept:
    everything = _arrays().client(client_id)[1].tolist()
    train, test = parts.train.client(client_id)[1].tolist(), parts.test.client(client_id)[1].tolist()
    assert train + test == everything and len(test) == len(everything) - int(len(everything) * 0.8 + 1e-9)
  assert parts.heldout.client(heldout_id)[1].tolist() == _arrays().client(heldout_id)[1].tolist()
  only_clients = data.split(_arrays(), seed=1, num_heldout_clients=2)
  assert only_clients.test is None and len(only_clients.heldout.client_ids) == 2
  only_examples = data.split(_arrays(), seed=1, test_fraction=0.5)
  assert only_examples.heldout is None and only_examples.test.client_ids == list('abcd')


def test_split_client_data_shares_the_dataset_function():
  client_data = _arrays().to_client_data()
  kept, heldout = data.split_client_data(client_data, 2, seed=0)
  assert sorted(kept.client_ids + heldout.client_ids) == list('abcd')
  assert len(heldout.client_ids) == 2
  assert _ys(heldout, heldout.client_ids[0]) == _ys(client_data, heldout.client_ids[0])
  with pytest.raises(ValueError, match='num_heldout must be positive'):
    data.split_client_data(client_data, 0, seed=0)


def test_holdout_client_examples_splits_each_dataset_serializably():
  client_data = _arrays().to_client_data()
  train, test = data.holdout_client_examples(client_data, 0.2)
  everything = _ys(client_data, 'a')
  assert _ys(train, 'a') == everything[:8] and _ys(test, 'a') == everything[8:]
  assert [int(e['y']) for e in test.dataset_computation('c')] == _ys(client_data, 'c')[6:]


def test_federated_arrays_checks_its_input():
  with pytest.raises(ValueError, match='same length'):
    data.FederatedArrays(np.zeros((3, 1)), np.zeros(4), [np.arange(3)], ['a'])
  with pytest.raises(ValueError, match=r'outside \[0, 3\)'):
    data.FederatedArrays(np.zeros((3, 1)), np.zeros(3), [np.arange(4)], ['a'])
  with pytest.raises(ValueError, match='Unknown client ids'):
    _arrays().select(['a', 'z'])
