"""Reddi et al.'s EMNIST autoencoder and Stack Overflow tag prediction tasks.

Loss and metrics on hand-made batches against values computed by hand, the
bag-of-words features against TFF's baseline preprocessing, and the real-data
path: tiny SQLite files in TFF's format plus the word and tag count files, in
a cache directory, through `fedtff.tasks.build_task`.
"""

import io
import json
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.simulation.baselines import client_spec
from tensorflow_federated.python.simulation.baselines.stackoverflow import (
    tag_prediction_preprocessing)

from fedtff.research import benchmarks
from fedtff import data
from fedtff import tasks

reddi = benchmarks.load_module('reddi')
STACKOVERFLOW = tff.simulation.datasets.stackoverflow


def _as_tensors(*arrays):
  return [tf.constant(np.asarray(a, np.float32)) for a in arrays]


def test_recall_and_precision_at_5_on_a_hand_made_batch():
  # Example 1: top 5 are labels 0-4, true labels {0, 1, 7}: 2 hits, 1 miss.
  # Example 2: top 5 are labels 3-7, true label {6}: 1 hit.
  y_true = [[1, 1, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1, 0]]
  logits = [[5, 4, 3, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5, 6, 7]]
  recall, precision = tasks.top_k_metrics()
  assert (recall.name, precision.name) == ('recall_at_5', 'precision_at_5')
  for metric in (recall, precision):
    metric.update_state(*_as_tensors(y_true, logits))
  assert float(recall.result()) == pytest.approx(3 / 4)  # 3 of the 4 true labels.
  assert float(precision.result()) == pytest.approx(3 / 10)  # 3 hits in 2 x 5 guesses.
  # Over batches the counts add up (micro average), as TFF sums them over clients.
  recall.update_state(*_as_tensors([[0, 0, 0, 0, 0, 0, 0, 1]], [[0] * 7 + [9]]))
  assert float(recall.result()) == pytest.approx(4 / 5)


def test_multi_label_loss_is_mean_over_labels_summed_over_examples():
  y_true = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
  logits = np.array([[2.0, -1.0, 0.0, 3.0], [0.5, -2.0, 1.0, -0.5]], np.float32)
  # -[y log s(z) + (1 - y) log(1 - s(z))] = log(1 + e^z) - y z.
  by_hand = np.sum(np.mean(np.log1p(np.exp(logits)) - y_true * logits, axis=1))
  assert float(tasks.multi_label_loss()(*_as_tensors(y_true, logits))) == pytest.approx(
      by_hand, rel=1e-5)


def test_autoencoder_loss_and_mse_on_a_hand_made_batch():
  config = reddi.get_config('emnist_autoencoder:fedavg')
  config.data.synthetic_standin = True
  kwargs = tasks.build_task(config).learning_kwargs()
  y_true, y_pred = _as_tensors([[0, 1, 1, 0], [1, 1, 1, 1]], [[0.5, 0.5, 1, 0], [1, 1, 1, 0]])
  # Per example: (0.25 + 0.25) / 4 = 0.125 and 1 / 4 = 0.25.
  assert float(kwargs['loss'](y_true, y_pred)) == pytest.approx(0.1875)
  (mse,) = kwargs['metrics']
  mse.update_state(y_true, y_pred)
  assert (mse.name, float(mse.result())) == ('mse', pytest.approx(0.1875))


def _post(tokens, title, tags):
  return {'creation_date': '2010-01-08 09:34:05 UTC', 'score': 1, 'tags': tags,
          'title': title, 'tokens': tokens, 'type': 'question'}


# (split, client, post); train client alice has one post so its batch is known.
POSTS = [
    ('train', 'alice', _post('how to center a div', 'css center', 'css|html|flexbox')),
    ('train', 'bob', _post('select from table', 'sql select', 'sql|mysql')),
    ('train', 'bob', _post('', '', 'java')),
    ('heldout', 'carol', _post('git push', 'git', 'git')),
    ('test', 'dave', _post('to sql or not to sql', 'sql', 'sql|java|c')),
]
WORD_COUNTS = 'how 40\nto 30\ncss 20\nsql 10\nselect 5\n'
# Sorted by count: css, html, sql, git (tie with sql: file order), java; flexbox is 6th.
TAG_COUNTS = {'html': 5, 'css': 9, 'sql': 3, 'git': 3, 'flexbox': 1, 'java': 2, 'c': 1}


def _write_stackoverflow_cache(root):
  data.write_sql_client_data(str(root / 'stackoverflow.sqlite'), POSTS)
  (root / 'datasets').mkdir()
  (root / 'datasets' / 'stackoverflow.word_count').write_text(WORD_COUNTS)
  # The tag counts as TFF's download leaves them: a .tar.bz2 archive, extracted on first use.
  payload = json.dumps(TAG_COUNTS).encode()
  with tarfile.open(root / 'datasets' / 'stackoverflow.tag_count.tar.bz2', 'w:bz2') as tar:
    info = tarfile.TarInfo('stackoverflow.tag_count')
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _tag_config(cache_dir, vocab_size=4, num_tags=5):
  config = reddi.get_config('stackoverflow_tag:fedavg')
  config.data.update(dict(cache_dir=str(cache_dir), vocab_size=vocab_size, num_classes=num_tags,
                          shuffle_buffer=0))
  return config


def _only_batch(client_data, client_id):
  batches = list(client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator())
  assert len(batches) == 1
  return batches[0]


def test_tag_task_reads_the_sqlite_file_and_count_files(tmp_path):
  _write_stackoverflow_cache(tmp_path)
  task = tasks.build_task(_tag_config(tmp_path))
  assert data.load_stackoverflow_tags(5, cache_dir=str(tmp_path)) == [
      'css', 'html', 'sql', 'git', 'java']
  assert (task.train_data.client_ids, task.test_data.client_ids) == (['alice', 'bob'], ['dave'])
  assert task.element_spec['x'].shape.as_list() == [None, 4]  # how, to, css, sql
  assert task.element_spec['y'].shape.as_list() == [None, 5]  # css, html, sql, git, java
  # 'how to center a div css center': 7 words, of which how, to, css are in the vocab.
  alice = _only_batch(task.train_data, 'alice')
  np.testing.assert_allclose(alice['x'], [[1 / 7, 1 / 7, 1 / 7, 0]], rtol=1e-6)
  np.testing.assert_array_equal(alice['y'], [[1, 1, 0, 0, 0]])  # flexbox is not a top-5 tag
  bob = _only_batch(task.train_data, 'bob')
  # 'select from table sql select': sql 1 of 5 words (select is the 5th word, outside 4).
  np.testing.assert_allclose(bob['x'], [[0, 0, 0, 1 / 5], [0, 0, 0, 0]], rtol=1e-6)
  np.testing.assert_array_equal(bob['y'], [[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
  dave = _only_batch(task.test_data, 'dave')  # 'to sql or not to sql sql': 7 words.
  np.testing.assert_allclose(dave['x'], [[0, 2 / 7, 0, 3 / 7]], rtol=1e-6)
  np.testing.assert_array_equal(dave['y'], [[0, 0, 1, 0, 1]])
  model = task.model_fn()
  assert model(alice['x']).shape == (1, 5) and model.count_params() == 4 * 5 + 5


def test_tag_task_without_the_tag_counts_names_the_file(tmp_path):
  _write_stackoverflow_cache(tmp_path)
  (tmp_path / 'datasets' / 'stackoverflow.tag_count.tar.bz2').unlink()
  with pytest.raises(data.DatasetNotCachedError, match='stackoverflow.tag_count'):
    tasks.build_task(_tag_config(tmp_path))


def test_tag_task_refuses_fewer_tags_than_top_k(tmp_path):
  _write_stackoverflow_cache(tmp_path)
  with pytest.raises(ValueError, match='at least 5 tags'):
    tasks.build_task(_tag_config(tmp_path, num_tags=3))


def _tff_batches(dataset_fn, raw):
  return [(np.asarray(x), np.asarray(y)) for x, y in dataset_fn(raw).as_numpy_iterator()]


def test_bag_of_words_matches_tffs_baseline_and_reddis_normalization():
  words = list(STACKOVERFLOW.get_synthetic_word_counts())[:30]
  tags = list(STACKOVERFLOW.get_synthetic_tag_counts())[:10]
  raw = STACKOVERFLOW.get_synthetic().create_tf_dataset_for_client('synthetic_2')
  spec = data.ClientPreprocessing(batch_size=3)
  theirs = _tff_batches(tag_prediction_preprocessing.create_preprocess_fn(
      client_spec.ClientSpec(num_epochs=1, batch_size=3, shuffle_buffer_size=1), words, tags),
      raw)
  tff_like = list(data.stackoverflow_tag_preprocess(spec, words, tags, oov_in_total=False)(raw))
  reddis = list(data.stackoverflow_tag_preprocess(spec, words, tags)(raw))
  np.testing.assert_allclose(tff_like[0]['x'], theirs[0][0], rtol=1e-6)
  np.testing.assert_array_equal(tff_like[0]['y'], theirs[0][1])
  np.testing.assert_array_equal(reddis[0]['y'], theirs[0][1])
  # Reddi et al.'s code divides by all words of the post, TFF 0.87's by the in-vocab ones.
  posts = [f'{e["tokens"].decode()} {e["title"].decode()}'.split() for e in raw.as_numpy_iterator()]
  share_in_vocab = np.array([sum(w in words for w in post) / len(post) for post in posts])
  assert 0 < share_in_vocab.min() < 1  # Some posts have out-of-vocabulary words.
  np.testing.assert_allclose(reddis[0]['x'], theirs[0][0] * share_in_vocab[:, None], rtol=1e-5)


def test_autoencoder_task_reads_emnist_from_the_sqlite_file(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.uniform(size=(3, 28, 28)).astype(np.float32)
  rows = [('all_train', 'w1', {'label': 3, 'pixels': pixels[0]}),
          ('all_train', 'w1', {'label': 4, 'pixels': pixels[1]}),
          ('all_test', 'w2', {'label': 5, 'pixels': pixels[2]})]
  data.write_sql_client_data(str(tmp_path / 'emnist_all.sqlite'), rows)
  config = reddi.get_config('emnist_autoencoder:fedadam')
  config.data.update(dict(cache_dir=str(tmp_path), shuffle_buffer=0))
  task = tasks.build_task(config)
  assert (task.train_data.client_ids, task.test_data.client_ids) == (['w1'], ['w2'])
  batch = _only_batch(task.train_data, 'w1')
  expected = 1.0 - pixels[:2].reshape(2, 784)  # Background 0, ink 1, as in TFF's task.
  np.testing.assert_allclose(batch['x'], expected, rtol=1e-6)
  np.testing.assert_array_equal(batch['x'], batch['y'])
  np.testing.assert_allclose(_only_batch(task.test_data, 'w2')['y'],
                             1.0 - pixels[2:].reshape(1, 784), rtol=1e-6)
  model = task.model_fn()
  assert model.count_params() == 2_837_314
  output = model(batch['x']).numpy()
  assert output.shape == (2, 784) and 0 < output.min() and output.max() < 1


def test_reddi_configs_of_the_two_tasks():
  config = reddi.get_config('stackoverflow_tag:fedyogi')
  assert (config.data.vocab_size, config.data.num_classes, config.data.max_elements) == (
      10000, 500, 1000)
  assert (config.clients_per_round, config.data.batch_size, config.model.name) == (
      10, 100, 'logistic_regression')
  config = reddi.get_config('emnist_autoencoder:fedavgm')
  assert (config.model.name, config.data.batch_size, config.total_rounds) == (
      'autoencoder', 20, 3000)
  assert reddi.REPORTED_METRIC['stackoverflow_tag'] == 'eval/recall_at_5'
  assert reddi.REPORTED_METRIC['emnist_autoencoder'] == 'eval/mse'
