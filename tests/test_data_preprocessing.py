"""Client preprocessing: iteration settings, and task transforms checked against TFF's baselines."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from fedtff import data
# TFF's baseline preprocessing, the reference these transforms reimplement.
from tensorflow_federated.python.simulation.baselines.cifar100 import image_classification_preprocessing as tff_cifar
from tensorflow_federated.python.simulation.baselines.emnist import emnist_preprocessing as tff_emnist
from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_preprocessing as tff_shakespeare
from tensorflow_federated.python.simulation.baselines.stackoverflow import word_prediction_preprocessing as tff_stackoverflow

SYNTHETIC = tff.simulation.datasets


def _no_shuffle_spec(batch_size):
  return tff.simulation.baselines.ClientSpec(num_epochs=1, batch_size=batch_size,
                                             shuffle_buffer_size=1)


def _batches(dataset):
  return list(dataset.as_numpy_iterator())


def _assert_same_batches(ours, theirs):
  assert len(ours) == len(theirs)
  for mine, reference in zip(ours, theirs):
    np.testing.assert_array_equal(mine['x'], reference[0])
    np.testing.assert_array_equal(mine['y'], reference[1])


def test_select_then_batch_in_tffs_order():
  spec = data.ClientPreprocessing(batch_size=4, epochs=3, max_elements=10)
  batches = _batches(spec.build()(tf.data.Dataset.range(5)))
  assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 0, 1, 2], [3, 4]]
  dropped = data.ClientPreprocessing(batch_size=4, epochs=3, drop_remainder=True)
  assert [len(b) for b in _batches(dropped.build()(tf.data.Dataset.range(5)))] == [4, 4, 4]


def test_seeded_shuffle_is_repeatable_and_maps_each_element():
  spec = data.ClientPreprocessing(batch_size=10, shuffle_buffer=10, shuffle_seed=3)
  preprocess = spec.build(lambda x: x * 2)
  first = _batches(preprocess(tf.data.Dataset.range(10)))[0].tolist()
  assert first == _batches(preprocess(tf.data.Dataset.range(10)))[0].tolist()
  assert first != list(range(0, 20, 2)) and sorted(first) == list(range(0, 20, 2))


@pytest.mark.parametrize(
    'kwargs, message',
    [({'batch_size': 0}, 'batch_size must be positive'),
     ({'batch_size': 2, 'epochs': 0}, 'epochs must be positive'),
     ({'batch_size': 2, 'shuffle_buffer': -1}, 'shuffle_buffer must be non-negative'),
     ({'batch_size': 2, 'max_elements': 0}, 'max_elements must be positive or None')],
    ids=['batch', 'epochs', 'shuffle', 'max_elements'])
def test_rejects_bad_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.ClientPreprocessing(**kwargs)


def test_emnist_matches_tff_baseline_with_a_channel_axis():
  raw = SYNTHETIC.emnist.get_synthetic().create_tf_dataset_for_client('synthetic1')
  ours = _batches(data.ClientPreprocessing(batch_size=4).build(data.emnist_map())(raw))
  theirs = _batches(tff_emnist.create_preprocess_fn(_no_shuffle_spec(4), debug_seed=0)(raw))
  _assert_same_batches(ours, theirs)
  assert ours[0]['x'].shape == (4, 28, 28, 1) and ours[0]['x'].dtype == np.float32
  assert ours[0]['y'].dtype == np.int32
  inverted = _batches(data.ClientPreprocessing(batch_size=4).build(data.emnist_map(invert=True))(raw))
  np.testing.assert_allclose(inverted[0]['x'], 1.0 - ours[0]['x'])


def test_emnist_autoencoder_matches_tff_baseline():
  raw = SYNTHETIC.emnist.get_synthetic().create_tf_dataset_for_client('synthetic1')
  ours = _batches(data.ClientPreprocessing(batch_size=5).build(data.emnist_autoencoder_map())(raw))
  theirs = _batches(tff_emnist.create_preprocess_fn(_no_shuffle_spec(5), 'autoencoder', debug_seed=0)(raw))
  _assert_same_batches(ours, theirs)


def test_cifar_eval_crop_matches_tff_baseline():
  raw = SYNTHETIC.cifar100.get_synthetic().create_tf_dataset_for_client('synthetic1')
  ours = _batches(data.ClientPreprocessing(batch_size=5).build(data.cifar_map(train=False))(raw))
  theirs = _batches(tff_cifar.create_preprocess_fn(_no_shuffle_spec(5), crop_shape=(24, 24, 3))(raw))
  _assert_same_batches(ours, theirs)
  assert ours[0]['x'].shape == (5, 24, 24, 3) and ours[0]['y'].tolist() == [0, 51, 51, 88, 71]


def test_cifar_train_crops_at_random_and_standardizes():
  raw = SYNTHETIC.cifar100.get_synthetic().create_tf_dataset_for_client('synthetic1')
  images = _batches(data.ClientPreprocessing(batch_size=5).build(
      data.cifar_map(train=True, seed=1))(raw))[0]['x']
  assert images.shape == (5, 24, 24, 3)
  np.testing.assert_allclose(images.reshape(5, -1).mean(axis=1), 0.0, atol=1e-4)
  np.testing.assert_allclose(images.reshape(5, -1).std(axis=1), 1.0, atol=1e-3)
  with pytest.raises(ValueError, match='crop_shape must be'):
    data.cifar_map(train=True, crop_shape=(40, 24, 3))


def test_cifar_train_crop_differs_between_rounds_and_repeats_within_one():
  images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.int32)
  client_data = tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      ['a'], lambda _: tf.data.Dataset.from_tensor_slices(
          collections.OrderedDict(image=images, label=np.arange(3, dtype=np.int64))))
  rounds = data.RoundClientData(
      client_data, data.ClientPreprocessing(batch_size=3).build(data.cifar_map(train=True)),
      seed=0)
  crops = {r: _batches(rounds.create_tf_dataset_for_client('a', round_num=r))[0]['x']
           for r in (1, 2)}
  assert crops[1].shape == (3, 24, 24, 3)
  assert not np.allclose(crops[1], crops[2])
  np.testing.assert_array_equal(
      _batches(rounds.create_tf_dataset_for_client('a', round_num=1))[0]['x'], crops[1])
  # Each crop is a 24x24 window of its image, flipped or not, then standardized.
  for image, crop in zip(images.astype(np.float32), crops[1]):
    windows = [np.asarray(tf.image.per_image_standardization(w))
               for i in range(9) for j in range(9)
               for w in (image[i:i + 24, j:j + 24], image[i:i + 24, j:j + 24][:, ::-1])]
    assert min(np.abs(w - crop).max() for w in windows) < 1e-4


def test_shakespeare_matches_tff_baseline_vocabulary_and_tokens():
  assert len(data.shakespeare_special_tokens()) == 4
  assert data.shakespeare_special_tokens()[-1] + 1 == tff.simulation.baselines.shakespeare.VOCAB_LENGTH
  assert data.preprocessing.SHAKESPEARE_CHAR_VOCAB == tff_shakespeare.CHAR_VOCAB
  raw = SYNTHETIC.shakespeare.get_synthetic().create_tf_dataset_for_client(
      'THE_TRAGEDY_OF_KING_LEAR_MACBETH')
  spec = data.ClientPreprocessing(batch_size=2)
  ours = _batches(data.shakespeare_preprocess(spec, sequence_length=10)(raw))
  theirs = _batches(tff_shakespeare.create_preprocess_fn(_no_shuffle_spec(2), sequence_length=10)(raw))
  _assert_same_batches(ours, theirs)
  pad, _, bos, _ = data.shakespeare_special_tokens()
  assert ours[0]['x'].shape == (2, 10) and ours[0]['x'][0, 0] == bos
  np.testing.assert_array_equal(ours[0]['x'][:, 1:], ours[0]['y'][:, :-1])
  assert pad == 0


def test_stackoverflow_matches_tff_baseline_with_a_given_vocab():
  vocab = list(SYNTHETIC.stackoverflow.get_synthetic_word_counts())[:20]
  raw = SYNTHETIC.stackoverflow.get_synthetic().create_tf_dataset_for_client('synthetic_1')
  spec = data.ClientPreprocessing(batch_size=2)
  ours = _batches(data.stackoverflow_word_preprocess(spec, vocab, sequence_length=8)(raw))
  theirs = _batches(tff_stackoverflow.create_preprocess_fn(
      _no_shuffle_spec(2), vocab, sequence_length=8)(raw))
  _assert_same_batches(ours, theirs)
  pad, oov, bos, eos = data.stackoverflow_special_tokens(len(vocab))
  assert (pad, oov, bos, eos) == (0, (21,), 22, 23)
  assert ours[0]['x'].shape == (2, 8) and set(ours[0]['x'][:, 0]) == {bos}
  with pytest.raises(ValueError, match='vocab must hold at least one word'):
    data.stackoverflow_word_preprocess(spec, [])


def test_preprocessed_client_data_stays_serializable():
  client_data = data.from_arrays(np.arange(12, dtype=np.float32).reshape(6, 2),
                                 np.arange(6), [[0, 1, 2], [3, 4, 5]])
  spec = data.ClientPreprocessing(batch_size=2, epochs=2, shuffle_buffer=3, shuffle_seed=0)
  preprocessed = client_data.preprocess(spec.build(lambda e: collections.OrderedDict(x=e['x'] + 1, y=e['y'])))
  built = list(preprocessed.dataset_computation('1'))
  assert [len(b['y']) for b in built] == [2, 2, 2]
  assert sorted(np.concatenate([b['y'] for b in built]).tolist()) == [3, 3, 4, 4, 5, 5]
