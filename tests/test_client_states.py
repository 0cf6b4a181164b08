"""The per-client state store: lazy zeros, in memory and on disk alike, exact restore."""

import os

import numpy as np
import pytest

from fedtff.runner import client_states

IDS = [f'client_{i}' for i in range(6)]


def rounds_of_writes(store, rounds, *, seed=0, checkpoint_every=1, after_round=None):
  """Writes random states of 2-3 clients per round (some twice); journals each checkpoint."""
  rng = np.random.default_rng(seed)
  for round_num in range(1, rounds + 1):
    chosen = list(rng.choice(IDS, size=3, replace=False))
    store.put(chosen, store.get(chosen) + rng.normal(size=(3, store.state_size)))
    if round_num % checkpoint_every == 0:
      store.write_journal(round_num)
      if after_round:
        after_round(round_num)
      store.apply(round_num)


@pytest.mark.parametrize('on_disk', [False, True], ids=['memory', 'disk'])
def test_a_client_never_seen_is_zero(on_disk, tmp_path):
  store = client_states.ClientStateStore(str(tmp_path), IDS, 4, on_disk=on_disk)
  np.testing.assert_array_equal(store.get(['client_3', 'client_0']), np.zeros((2, 4)))


def test_memory_and_disk_hold_the_same_rows(tmp_path):
  stores = [client_states.ClientStateStore(str(tmp_path / name), IDS, 5, on_disk=on_disk)
            for name, on_disk in (('m', False), ('d', True))]
  for store in stores:
    rounds_of_writes(store, 7, checkpoint_every=2)
  np.testing.assert_array_equal(stores[0].get(IDS), stores[1].get(IDS))


def test_the_disk_file_is_sparse_until_rows_are_written(tmp_path):
  ids = [str(i) for i in range(100_000)]
  store = client_states.ClientStateStore(str(tmp_path), ids, 1000, on_disk=True)
  assert os.path.getsize(tmp_path / client_states.ROWS_FILE) == 100_000 * 1000 * 4
  assert store.disk_bytes() < 1 << 20
  store.put(['5'], np.ones((1, 1000)))
  store.save(1)
  assert store.disk_bytes() < 1 << 20
  np.testing.assert_array_equal(store.get(['5', '6']), [np.ones(1000), np.zeros(1000)])


@pytest.mark.parametrize('on_disk', [False, True], ids=['memory', 'disk'])
def test_restore_gives_the_rows_after_that_round(on_disk, tmp_path):
  store = client_states.ClientStateStore(str(tmp_path / 'run'), IDS, 3, on_disk=on_disk)
  rounds_of_writes(store, 6)
  reference = client_states.ClientStateStore(str(tmp_path / 'ref'), IDS, 3, on_disk=False)
  rounds_of_writes(reference, 4)
  # A new process (fresh object) resumes from round 4's checkpoint: rounds 5-6 are undone.
  resumed = client_states.ClientStateStore(str(tmp_path / 'run'), IDS, 3, on_disk=on_disk)
  resumed.restore(4)
  np.testing.assert_array_equal(resumed.get(IDS), reference.get(IDS))
  assert resumed.journals()[-1] == 4


def test_a_kill_between_journal_and_apply_restores_exactly(tmp_path):
  store = client_states.ClientStateStore(str(tmp_path / 'run'), IDS, 3, on_disk=True)
  rounds_of_writes(store, 3)
  store.put(['client_1'], np.full((1, 3), 9.0))
  store.write_journal(4)  # Killed before the server checkpoint of round 4 and the apply.
  store._set_applied(4, applying=True)  # pylint: disable=protected-access  # Or mid-apply.
  store._rows[1] = 9.0  # pylint: disable=protected-access
  reference = client_states.ClientStateStore(str(tmp_path / 'ref'), IDS, 3)
  rounds_of_writes(reference, 3)
  resumed = client_states.ClientStateStore(str(tmp_path / 'run'), IDS, 3, on_disk=True)
  resumed.restore(3)
  np.testing.assert_array_equal(resumed.get(IDS), reference.get(IDS))


def test_prune_keeps_the_journals_a_kept_checkpoint_needs(tmp_path):
  store = client_states.ClientStateStore(str(tmp_path), IDS, 2, on_disk=True)
  rounds_of_writes(store, 5)
  store.prune([4, 5])
  assert store.journals() == [5]
  store.restore(4)  # Undo 5 from its before-rows.
  reference = client_states.ClientStateStore(str(tmp_path / 'ref'), IDS, 2)
  rounds_of_writes(reference, 4)
  np.testing.assert_array_equal(store.get(IDS), reference.get(IDS))


def test_bad_input_is_refused_with_a_sentence(tmp_path):
  store = client_states.ClientStateStore(str(tmp_path), IDS, 2)
  with pytest.raises(KeyError, match="'nobody' is not in this store"):
    store.get(['nobody'])
  with pytest.raises(ValueError, match=r'states must have shape \(1, 2\)'):
    store.put(['client_0'], np.zeros((1, 3)))


@pytest.mark.parametrize('on_disk', [False, True], ids=['memory', 'disk'])
def test_restore_to_round_0_starts_over(on_disk, tmp_path):
  store = client_states.ClientStateStore(str(tmp_path), IDS, 3, on_disk=on_disk)
  rounds_of_writes(store, 3)
  store.restore(0)
  assert store.journals() == []
  np.testing.assert_array_equal(store.get(IDS), np.zeros((len(IDS), 3)))
  assert store.disk_bytes() < 1 << 16
