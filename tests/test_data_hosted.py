"""TFF hosted datasets read from tiny SQLite files in TFF's own format."""

import lzma
import os
import tarfile
import urllib.error

import numpy as np
import pytest
import tensorflow_federated as tff

from fedtff import data

TFF_DATASETS = tff.simulation.datasets
SPLITS = {
    'cifar100': ('train', 'test'),
    'emnist_digits': ('digits_only_train', 'digits_only_test'),
    'emnist_full': ('all_train', 'all_test'),
    'shakespeare': ('train', 'test'),
    'stackoverflow': ('train', 'heldout', 'test'),
}
FILENAMES = {'cifar100': 'cifar100.sqlite', 'emnist_digits': 'emnist_all.sqlite',
             'emnist_full': 'emnist_all.sqlite', 'shakespeare': 'shakespeare.sqlite',
             'stackoverflow': 'stackoverflow.sqlite'}
# TFF's own parsing of each file, to check fedtff reads the same elements.
TFF_PARSING = {
    'cifar100': TFF_DATASETS.cifar100._add_proto_parsing,  # pylint: disable=protected-access
    'emnist_digits': TFF_DATASETS.emnist._add_proto_parsing,  # pylint: disable=protected-access
    'emnist_full': TFF_DATASETS.emnist._add_proto_parsing,  # pylint: disable=protected-access
    'shakespeare': TFF_DATASETS.shakespeare._add_parsing,  # pylint: disable=protected-access
    'stackoverflow': TFF_DATASETS.stackoverflow._add_proto_parsing,  # pylint: disable=protected-access
}
SYNTHETIC = {
    'cifar100': TFF_DATASETS.cifar100.get_synthetic,
    'emnist_digits': TFF_DATASETS.emnist.get_synthetic,
    'emnist_full': TFF_DATASETS.emnist.get_synthetic,
    'shakespeare': TFF_DATASETS.shakespeare.get_synthetic,
    'stackoverflow': TFF_DATASETS.stackoverflow.get_synthetic,
}


def _example(name, value):
  """One example in the dataset's feature names, dtypes and shapes."""
  if name.startswith('emnist'):
    return {'label': value, 'pixels': np.full((28, 28), value / 10, np.float32)}
  if name == 'cifar100':
    return {'coarse_label': value % 20, 'image': np.full((32, 32, 3), value, np.int64),
            'label': value}
  if name == 'shakespeare':
    return {'snippets': f'line {value}'}
  return {'creation_date': '2010-01-08 09:34:05 UTC', 'score': value, 'tags': 'sql|css',
          'title': f'title {value}', 'tokens': f'word {value} .', 'type': 'answer'}


def _rows(name):
  """Two clients per split, three examples each; values differ across splits."""
  rows = []
  for s, split in enumerate(SPLITS[name]):
    for c, client in enumerate(['alice', 'bob']):
      rows.extend((split, f'{client}_{split}', _example(name, 10 * s + 3 * c + i))
                  for i in range(3))
  return rows


def _cache_with(tmp_path, name):
  data.write_sql_client_data(str(tmp_path / FILENAMES[name]), _rows(name))
  return str(tmp_path)


def _elements(client_data, client_id):
  return list(client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator())


def _assert_same_elements(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert list(a) == list(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize('name', sorted(SPLITS))
def test_reads_every_split_like_tff(name, tmp_path):
  splits = data.load_tff_dataset(name, cache_dir=_cache_with(tmp_path, name))
  path = str(tmp_path / FILENAMES[name])
  assert len(splits) == len(SPLITS[name])
  for split, client_data in zip(SPLITS[name], splits):
    assert client_data.client_ids == [f'alice_{split}', f'bob_{split}']
    assert client_data.element_type_structure == SYNTHETIC[name]().element_type_structure
    by_tff = TFF_DATASETS.SqlClientData(path, split).preprocess(TFF_PARSING[name])
    _assert_same_elements(_elements(client_data, f'bob_{split}'),
                          _elements(by_tff, f'bob_{split}'))


def test_emnist_values_survive_the_round_trip(tmp_path):
  _, test = data.load_tff_dataset('emnist_digits', cache_dir=_cache_with(tmp_path, 'emnist_digits'))
  elements = _elements(test, 'bob_digits_only_test')
  assert [e['label'] for e in elements] == [13, 14, 15]
  np.testing.assert_allclose(elements[2]['pixels'], np.full((28, 28), 1.5, np.float32))


def test_reads_a_file_written_by_tffs_own_writer(tmp_path):
  synthetic = TFF_DATASETS.emnist.get_synthetic()
  TFF_DATASETS.save_to_sql_client_data(
      synthetic.client_ids, synthetic.create_tf_dataset_for_client,
      str(tmp_path / 'emnist_all.sqlite'),
      split_names_by_client_id={'synthetic1': 'all_train', 'synthetic2': 'all_test'})
  train, test = data.load_tff_dataset('emnist_full', cache_dir=str(tmp_path))
  assert (train.client_ids, test.client_ids) == (['synthetic1'], ['synthetic2'])
  _assert_same_elements(_elements(test, 'synthetic2'), _elements(synthetic, 'synthetic2'))


def test_loaded_client_data_stays_serializable(tmp_path):
  train, _ = data.load_tff_dataset('shakespeare', cache_dir=_cache_with(tmp_path, 'shakespeare'))
  built = list(train.dataset_computation('bob_train'))
  assert [e['snippets'] for e in built] == [b'line 3', b'line 4', b'line 5']


def test_decompresses_a_cached_lzma_download(tmp_path):
  plain = tmp_path / 'plain'
  plain.mkdir()
  _cache_with(plain, 'cifar100')
  (tmp_path / 'cifar100.sqlite.lzma').write_bytes(
      lzma.compress((plain / 'cifar100.sqlite').read_bytes()))
  assert data.tff_dataset_path('cifar100', cache_dir=str(tmp_path)) == str(tmp_path / 'cifar100.sqlite')
  train, _ = data.load_tff_dataset('cifar100', cache_dir=str(tmp_path))
  assert train.client_ids == ['alice_train', 'bob_train']
  assert (tmp_path / 'cifar100.sqlite').exists()


def _forbid_download(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('tried to download')
  for module in (TFF_DATASETS.emnist, TFF_DATASETS.cifar100, TFF_DATASETS.shakespeare,
                 TFF_DATASETS.stackoverflow):
    monkeypatch.setattr(module, 'load_data', fail)
  monkeypatch.setattr(TFF_DATASETS.download, 'get_compressed_file', fail)


def test_missing_cache_names_the_file_and_directory_without_network(tmp_path, monkeypatch):
  _forbid_download(monkeypatch)
  with pytest.raises(data.DatasetNotCachedError) as raised:
    data.load_tff_dataset('emnist_digits', cache_dir=str(tmp_path))
  message = str(raised.value)
  assert f'expected emnist_all.sqlite in {tmp_path};' in message
  assert 'https://storage.googleapis.com/tff-datasets-public/emnist_all.sqlite.lzma' in message
  assert os.listdir(tmp_path) == []


def test_default_cache_is_tffs_then_keras(tmp_path, monkeypatch):
  _forbid_download(monkeypatch)
  monkeypatch.setenv('HOME', str(tmp_path))
  with pytest.raises(data.DatasetNotCachedError,
                     match=f'in {tmp_path}/.tff \\(also looked in {tmp_path}/.keras/datasets\\)'):
    data.load_tff_dataset('stackoverflow')
  (tmp_path / '.keras' / 'datasets').mkdir(parents=True)
  _cache_with(tmp_path / '.keras' / 'datasets', 'stackoverflow')
  assert len(data.load_tff_dataset('stackoverflow')) == 3
  assert data.tff_dataset_path('stackoverflow') == str(
      tmp_path / '.keras' / 'datasets' / 'stackoverflow.sqlite')


def test_allow_download_calls_tffs_loader(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(TFF_DATASETS.emnist, 'load_data',
                      lambda **kwargs: calls.append(kwargs) or ('train', 'test'))
  result = data.load_tff_dataset('emnist_full', cache_dir=str(tmp_path), allow_download=True)
  assert result == ('train', 'test')
  assert calls == [{'only_digits': False, 'cache_dir': str(tmp_path)}]


def test_failed_download_is_one_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
  def partial_download(cache_dir):
    (tmp_path / 'shakespeare.sqlite').write_bytes(b'half a file')
    raise urllib.error.URLError('no route to host')
  monkeypatch.setattr(TFF_DATASETS.shakespeare, 'load_data', partial_download)
  with pytest.raises(RuntimeError, match=r"Downloading TFF dataset 'shakespeare' .* failed"):
    data.load_tff_dataset('shakespeare', cache_dir=str(tmp_path), allow_download=True)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    'content, message',
    [(b'not a database at all, just bytes' * 10, 'is not a readable TFF SQLite dataset'),
     (None, "has no clients in split 'digits_only_train'")],
    ids=['corrupt', 'missing_split'])
def test_bad_cached_file_is_a_clear_error(tmp_path, content, message):
  path = tmp_path / 'emnist_all.sqlite'
  if content is None:
    data.write_sql_client_data(str(path), [('all_train', 'a', _example('emnist_full', 1))])
  else:
    path.write_bytes(content)
  with pytest.raises(ValueError, match=message):
    data.load_tff_dataset('emnist_digits', cache_dir=str(tmp_path))


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match='valid names are cifar100, emnist_digits, emnist_full, '
                     'shakespeare, stackoverflow'):
    data.load_tff_dataset('mnist')


@pytest.mark.parametrize('name', sorted(SPLITS))
def test_synthetic_gives_tffs_clients_for_every_split(name):
  splits = data.load_tff_dataset(name, synthetic=True)
  expected = SYNTHETIC[name]()
  assert len(splits) == len(SPLITS[name])
  assert splits[0].client_ids == expected.client_ids
  assert splits[-1].element_type_structure == expected.element_type_structure


def test_stackoverflow_vocab_from_the_keras_cache(tmp_path):
  datasets_dir = tmp_path / 'datasets'
  datasets_dir.mkdir()
  counts = tmp_path / 'stackoverflow.word_count'
  counts.write_text('the 900\n. 800\nto 700\n')
  with tarfile.open(datasets_dir / 'stackoverflow.word_count.tar.bz2', 'w:bz2') as tar:
    tar.add(counts, arcname='stackoverflow.word_count')
  assert data.load_stackoverflow_vocab(2, cache_dir=str(tmp_path)) == ['the', '.']
  assert data.load_stackoverflow_vocab(cache_dir=str(tmp_path)) == ['the', '.', 'to']


def test_stackoverflow_vocab_missing_is_a_clear_error(tmp_path):
  with pytest.raises(data.DatasetNotCachedError,
                     match=f'expected {tmp_path}/datasets/stackoverflow.word_count'):
    data.load_stackoverflow_vocab(cache_dir=str(tmp_path))
