"""Feeding `from_arrays` clients to TFF from files: same data, same training, no stray files."""

import fcntl
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import data
from fedtff.data import feed as feed_lib
from fedtff.algorithms import tff_model
from tests import conftest


def _mixed_arrays():
  """Features of several dtypes and shapes; client '1' holds no examples."""
  rng = np.random.default_rng(0)
  features = {'pixels': rng.normal(size=(40, 3, 2)),  # float64: becomes float32
              'code': rng.integers(0, 200, size=40).astype(np.uint8),
              'mask': rng.integers(0, 2, size=(40, 4)).astype(bool)}
  labels = rng.integers(0, 5, 40)  # int64: becomes int32
  partition = [[3, 1, 7, 8, 30], [], list(range(10, 30)), [0, 2], [39, 38, 37]]
  return features, labels, partition


def _shuffled(client_data):
  return client_data.preprocess(data.ClientPreprocessing(
      batch_size=3, epochs=2, shuffle_buffer=6, shuffle_seed=4).build(
          lambda e: dict(e, y=e['y'] * 2)))


def _assert_same_elements(first, second):
  first, second = list(first), list(second)
  assert len(first) == len(second)
  for a, b in zip(first, second):
    tf.nest.assert_same_structure(a, b)
    tf.nest.map_structure(np.testing.assert_array_equal, a, b)


def test_file_feed_builds_the_same_datasets_element_by_element(tmp_path):
  # An eager shuffle with an op seed follows the global seed, which earlier tests
  # may have set; TFF's graphs use the default one. Clear it to compare orders.
  tf.random.set_seed(None)
  features, labels, partition = _mixed_arrays()
  from_file = _shuffled(data.from_arrays(features, labels, partition, allow_empty_clients=True,
                                         feed_dir=str(tmp_path)))
  from_constants = _shuffled(data.from_arrays(features, labels, partition,
                                              allow_empty_clients=True, feed='constants'))
  assert from_file.dataset_computation.type_signature == (
      from_constants.dataset_computation.type_signature)
  (files,) = tmp_path.iterdir()  # The file feed read from there: one file per client.
  assert sorted(p.name for p in files.iterdir()) == ['0', '1', '2', '3', '4']
  for client_id in from_file.client_ids:
    built = list(from_file.dataset_computation(client_id))  # Iterating again would reshuffle.
    _assert_same_elements(built, from_constants.dataset_computation(client_id))
    _assert_same_elements(built, from_file.create_tf_dataset_for_client(client_id))
  assert list(from_file.dataset_computation('1')) == []


def test_dtypes_decode_raw_cannot_read_fall_back_to_constants(tmp_path):
  features = {'ids': np.arange(6, dtype=np.uint32), 'name': np.array(list('abcdef'))}
  client_data = data.from_arrays(features, np.arange(6), [[0, 4], [5, 1, 2]],
                                 feed_dir=str(tmp_path))
  _assert_same_elements(client_data.dataset_computation('1'),
                        client_data.create_tf_dataset_for_client('1'))
  assert not list(tmp_path.iterdir())


def test_unknown_feed_is_refused(tiny_arrays):
  with pytest.raises(ValueError, match="feed must be one of .'file', 'constants'., got 'disk'"):
    data.from_arrays(*tiny_arrays, [[0], [1]], feed='disk')


def _model_fn():
  return fedtff.models.mlp((8,), 3, hidden_units=(6,))


def _rounds(process, client_arg, num_rounds=2):
  state = process.set_model_weights(process.initialize(),
                                    tff_model.initial_weights(_model_fn, seed=0))
  for _ in range(num_rounds):
    state = process.next(state, client_arg).state
  return [np.array(w) for w in tf.nest.flatten(process.get_model_weights(state))]


def test_fed_avg_rounds_give_the_same_weights_from_the_file_and_from_constants(tmp_path):
  features, labels = conftest.tiny_classification_arrays(num_examples=60)
  partition = np.split(np.random.default_rng(1).permutation(60), [10, 25, 45])
  spec = data.ClientPreprocessing(batch_size=4, epochs=2, shuffle_buffer=8, shuffle_seed=3)
  feeds = {feed: data.from_arrays(features, labels, partition, feed=feed,
                                  feed_dir=str(tmp_path)).preprocess(spec.build())
           for feed in data.client_data.FEEDS}
  process = fedtff.build_fed_avg(_model_fn, feeds['file'].element_type_structure,
                                 client_optimizer=fedtff.build_optimizer('sgd', 0.1))
  weights = {feed: _rounds(tff.simulation.compose_dataset_computation_with_learning_process(
      client_data.dataset_computation, process), client_data.client_ids)
             for feed, client_data in feeds.items()}
  assert not np.allclose(weights['file'][0], tff_model.initial_weights(_model_fn, 0).trainable[0])
  for new, old in zip(weights['file'], weights['constants']):
    np.testing.assert_allclose(new, old, atol=1e-6, rtol=0)


def test_the_files_are_written_once_lazily_and_reused(tmp_path):
  features, labels, partition = _mixed_arrays()
  first = data.from_arrays(features, labels, partition, allow_empty_clients=True,
                           feed_dir=str(tmp_path))
  assert not list(tmp_path.iterdir())  # Nothing is written until TFF traces the dataset fn.
  first.dataset_computation  # pylint: disable=pointless-statement
  (files,) = tmp_path.iterdir()
  mask = os.umask(0)
  os.umask(mask)
  assert (files / '0').stat().st_mode & 0o777 == 0o666 & ~mask  # Other users' workers read it.
  os.utime(files / '0', (0, 0))
  again = data.from_arrays(features, labels, partition, allow_empty_clients=True,
                           feed_dir=str(tmp_path))
  again.dataset_computation  # pylint: disable=pointless-statement
  assert list(tmp_path.iterdir()) == [files] and (files / '0').stat().st_mtime == 0  # Reused.
  partition[0] = partition[0][:-1]
  data.from_arrays(features, labels, partition, allow_empty_clients=True,
                   feed_dir=str(tmp_path)).dataset_computation  # pylint: disable=expression-not-assigned
  assert len(list(tmp_path.iterdir())) == 2  # Other rows, other files.


def _client_files(directory):
  arrays = [np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6, dtype=np.int32)]
  return feed_lib.ClientFiles(tuple(arrays), arrays, np.array([0, 2, 5, 6]), str(directory))


def test_an_interrupted_write_leaves_nothing_and_incomplete_files_are_never_read(
    tmp_path, monkeypatch):

  def crash(*args):
    raise OSError('disk full')

  with monkeypatch.context() as patch:
    patch.setattr(os, 'rename', crash)  # The last step of the write fails.
    with pytest.raises(OSError, match='disk full'):
      _client_files(tmp_path).path()
  assert not list(tmp_path.iterdir())  # Neither the final directory nor the partial one.
  final = tmp_path / _client_files(tmp_path)._name()  # pylint: disable=protected-access
  final.mkdir()
  (final / '0').write_bytes(b'\0' * 24)  # 12 bytes a row.
  (final / '1').write_bytes(b'\0' * 10)  # A truncated file under the final name ...
  partial = tmp_path / (final.name + '.1-x.partial')
  partial.mkdir()
  (partial / '1').write_bytes(b'\1' * 36)  # ... and a partial set.
  client_files = _client_files(tmp_path)
  assert client_files.path() == str(final)
  assert [(final / k).stat().st_size for k in '012'] == [24, 36, 12]
  x, y = client_files.dataset(tf.constant(1, tf.int64), tf.constant(3, tf.int64)).batch(3).get_single_element()
  assert y.numpy().tolist() == [2, 3, 4] and x.numpy().tolist() == [[4, 5], [6, 7], [8, 9]]
  assert partial.exists()  # Left alone: it may be another process's write in progress.


_SCRIPT = """
import os, signal, sys
import numpy as np
from fedtff import data
client_data = data.from_arrays(np.zeros((4, 3), np.float32), np.arange(4), [[0, 1], [2, 3]])
client_data.dataset_computation
print(data.feed.process_directory(), flush=True)
if sys.argv[1] == 'kill':
  os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_process_directory_is_removed_at_exit_or_after_a_kill_by_the_next_process(tmp_path):
  runs = {}
  for how in ('exit', 'kill'):  # Each in a temporary directory of its own (TMPDIR).
    (tmp_path / how).mkdir()
    runs[how] = subprocess.Popen(
        [sys.executable, '-c', _SCRIPT, how], cwd=conftest.REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=conftest.script_env(TMPDIR=str(tmp_path / how)))
  directories = {}
  for how, run in runs.items():
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == (0 if how == 'exit' else -9), stderr
    directories[how] = stdout.split()[-1]
    assert directories[how].startswith(str(tmp_path / how / 'fedtff-feed-'))
  assert not os.path.exists(directories['exit'])
  assert os.path.isfile(os.path.join(directories['kill'], '.lock'))  # SIGKILL: no atexit.
  assert feed_lib.remove_stale_directories(str(tmp_path / 'kill')) == [directories['kill']]
  assert not os.path.exists(directories['kill'])


def test_only_directories_of_dead_processes_are_stale(tmp_path):
  def directory(name, lock=True, age_s=0):
    path = tmp_path / name
    path.mkdir()
    if lock:
      (path / '.lock').touch()
    os.utime(path, (time.time() - age_s,) * 2)
    return path

  unlocked = directory('fedtff-feed-1-a')
  held = directory('fedtff-feed-2-b')
  young = directory('fedtff-feed-999999999-c', lock=False)
  old = directory('fedtff-feed-999999999-d', lock=False, age_s=120)
  alive = directory(f'fedtff-feed-{os.getpid()}-e', lock=False, age_s=120)
  other = directory('something-else')
  # Crashed between creating a directory under its hidden name and renaming it:
  unnamed_locked = directory('.fedtff-feed-3-f')
  unnamed_unlocked = directory('.fedtff-feed-999999999-g', lock=False, age_s=120)
  unnamed_alive = directory(f'.fedtff-feed-{os.getpid()}-h', lock=False, age_s=120)
  with open(held / '.lock', 'rb') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # As its living owner does.
    removed = feed_lib.remove_stale_directories(str(tmp_path))
  assert sorted(removed) == sorted(
      [str(unlocked), str(old), str(unnamed_locked), str(unnamed_unlocked)])
  assert [p.exists() for p in (unlocked, held, young, old, alive, other, unnamed_alive)] == [
      False, True, True, False, True, True, True]


def test_a_forked_child_does_not_remove_its_parents_directory(tmp_path):
  feed_lib._remove_process_directory(str(tmp_path), os.getpid() + 1)  # pylint: disable=protected-access
  assert tmp_path.exists()
