"""TFF's hosted federated datasets, read from the local cache without network.

TFF 0.87's `tff.simulation.datasets.<name>.load_data` downloads an LZMA
compressed SQLite file from `https://storage.googleapis.com/tff-datasets-public/`
and decompresses it into its cache directory: `~/.tff` when `cache_dir` is
None (see `tensorflow_federated/python/simulation/datasets/download.py`;
the docstrings' "Keras' default cache directory" is out of date). Both EMNIST
variants live in one file, `emnist_all.sqlite`, under different split names.

`load_tff_dataset` finds that file (or its `.lzma` download, which it
decompresses), reads it with `tff.simulation.datasets.load_and_parse_sql_client_data`
using the same feature names, dtypes and shapes as TFF's own loaders, and
never touches the network unless `allow_download=True`, in which case it calls
TFF's loader. `synthetic=True` returns TFF's small built-in `get_synthetic()`
clients instead, for smoke tests.

| name | file | splits returned | element |
|---|---|---|---|
| emnist_digits | emnist_all.sqlite | digits_only_train, digits_only_test | label int32, pixels float32 [28, 28] |
| emnist_full | emnist_all.sqlite | all_train, all_test | as emnist_digits (62 classes) |
| cifar100 | cifar100.sqlite | train, test | coarse_label int64, image uint8 [32, 32, 3], label int64 |
| shakespeare | shakespeare.sqlite | train, test | snippets string |
| stackoverflow | stackoverflow.sqlite | train, heldout, test | creation_date, score int64, tags, title, tokens, type |
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import lzma
import os
import shutil
import sqlite3
import tarfile
import tempfile
from typing import Callable, List, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_federated as tff

ClientData = tff.simulation.datasets.ClientData
URL_PREFIX = 'https://storage.googleapis.com/tff-datasets-public/'
_DATASETS = tff.simulation.datasets
_DOWNLOAD_ERRORS = (OSError, lzma.LZMAError, http.client.HTTPException, EOFError)


class DatasetNotCachedError(FileNotFoundError):
  """A hosted dataset is not in the local cache and downloading is off."""


@dataclasses.dataclass(frozen=True)
class _Hosted:
  filename: str
  splits: Tuple[str, ...]
  element_spec: collections.OrderedDict
  load_data: Callable[[Optional[str]], tuple]
  get_synthetic: Callable[[], ClientData]


def _spec(**features: Tuple[tf.DType, Sequence[int]]) -> collections.OrderedDict:
  return collections.OrderedDict(
      (name, tf.TensorSpec(shape, dtype)) for name, (dtype, shape) in features.items())


_EMNIST = _spec(label=(tf.int32, ()), pixels=(tf.float32, (28, 28)))
_HOSTED = {
    'cifar100': _Hosted(
        'cifar100.sqlite', ('train', 'test'),
        _spec(coarse_label=(tf.int64, ()), image=(tf.uint8, (32, 32, 3)),
              label=(tf.int64, ())),
        lambda cache_dir: _DATASETS.cifar100.load_data(cache_dir=cache_dir),
        _DATASETS.cifar100.get_synthetic),
    'emnist_digits': _Hosted(
        'emnist_all.sqlite', ('digits_only_train', 'digits_only_test'), _EMNIST,
        lambda cache_dir: _DATASETS.emnist.load_data(only_digits=True, cache_dir=cache_dir),
        _DATASETS.emnist.get_synthetic),
    'emnist_full': _Hosted(
        'emnist_all.sqlite', ('all_train', 'all_test'), _EMNIST,
        lambda cache_dir: _DATASETS.emnist.load_data(only_digits=False, cache_dir=cache_dir),
        _DATASETS.emnist.get_synthetic),
    'shakespeare': _Hosted(
        'shakespeare.sqlite', ('train', 'test'), _spec(snippets=(tf.string, ())),
        lambda cache_dir: _DATASETS.shakespeare.load_data(cache_dir=cache_dir),
        _DATASETS.shakespeare.get_synthetic),
    'stackoverflow': _Hosted(
        'stackoverflow.sqlite', ('train', 'heldout', 'test'),
        _spec(creation_date=(tf.string, ()), score=(tf.int64, ()), tags=(tf.string, ()),
              title=(tf.string, ()), tokens=(tf.string, ()), type=(tf.string, ())),
        lambda cache_dir: _DATASETS.stackoverflow.load_data(cache_dir=cache_dir),
        _DATASETS.stackoverflow.get_synthetic),
}
TFF_DATASETS = tuple(sorted(_HOSTED))


def _hosted(name: str) -> _Hosted:
  if name not in _HOSTED:
    raise ValueError(f'Unknown dataset {name!r}; valid names are {", ".join(TFF_DATASETS)}.')
  return _HOSTED[name]


def default_cache_dir() -> str:
  """`~/.tff`: where TFF 0.87 caches its SQLite files when `cache_dir` is None."""
  return os.path.join(os.path.expanduser('~'), '.tff')


def _search_dirs(cache_dir: Optional[str]) -> List[str]:
  if cache_dir is not None:
    return [cache_dir]
  return [default_cache_dir(), os.path.join(os.path.expanduser('~'), '.keras', 'datasets')]


def _decompress(compressed: str, target: str) -> None:
  handle, partial = tempfile.mkstemp(dir=os.path.dirname(target), suffix='.partial')
  try:
    with lzma.open(compressed) as source, os.fdopen(handle, 'wb') as sink:
      shutil.copyfileobj(source, sink, 2**20)
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def _cached(filename: str, cache_dir: Optional[str]) -> Optional[str]:
  """The first cached copy: the SQLite file or its `.lzma` download."""
  for directory in _search_dirs(cache_dir):
    for candidate in (filename, filename + '.lzma'):
      if os.path.isfile(os.path.join(directory, candidate)):
        return os.path.join(directory, candidate)
  return None


def _sqlite_file(filename: str, cache_dir: Optional[str]) -> Optional[str]:
  """The cached SQLite file, decompressing a cached `.lzma` download if needed."""
  path = _cached(filename, cache_dir)
  if path is not None and path.endswith('.lzma'):
    _decompress(path, path[:-len('.lzma')])
    path = path[:-len('.lzma')]
  return path


def tff_dataset_path(name: str, *, cache_dir: Optional[str] = None) -> str:
  """The SQLite file `load_tff_dataset(name)` reads: the cached one, or where it goes.

  Args:
    name: One of `TFF_DATASETS`.
    cache_dir: The cache directory; None means `~/.tff`, then `~/.keras/datasets`.
  """
  filename = _hosted(name).filename
  path = _cached(filename, cache_dir)
  if path is None:
    return os.path.join(_search_dirs(cache_dir)[0], filename)
  return path[:-len('.lzma')] if path.endswith('.lzma') else path


def _not_cached(name: str, cache_dir: Optional[str]) -> DatasetNotCachedError:
  filename = _hosted(name).filename
  directory, *others = _search_dirs(cache_dir)
  also = f' (also looked in {", ".join(others)})' if others else ''
  return DatasetNotCachedError(
      f'TFF dataset {name!r} is not cached: expected {filename} in {directory}{also}; '
      f'download {URL_PREFIX}{filename}.lzma and put it (or the decompressed '
      f'{filename}) in {directory}, or pass allow_download=True.')


def _check_split(path: str, split: str) -> None:
  """Raises a clear error if `path` is not a TFF SQLite file or lacks `split`."""
  query = 'SELECT COUNT(DISTINCT client_id) FROM client_metadata WHERE split_name = ?;'
  try:
    with contextlib.closing(sqlite3.connect(f'file:{path}?mode=ro', uri=True)) as connection:
      (num_clients,), = connection.execute(query, (split,)).fetchall()
  except sqlite3.Error as error:
    raise ValueError(
        f'{path} is not a readable TFF SQLite dataset ({error}); delete it and '
        'download it again.') from error
  if num_clients == 0:
    raise ValueError(f'{path} has no clients in split {split!r}; is it the right file?')


def _read(path: str, hosted: _Hosted) -> Tuple[ClientData, ...]:
  for split in hosted.splits:
    _check_split(path, split)
  return tuple(
      _DATASETS.load_and_parse_sql_client_data(path, hosted.element_spec, split)
      for split in hosted.splits)


def _download(name: str, hosted: _Hosted, cache_dir: Optional[str]) -> Tuple[ClientData, ...]:
  target = os.path.join(_search_dirs(cache_dir)[0], hosted.filename)
  try:
    return tuple(hosted.load_data(cache_dir))
  except _DOWNLOAD_ERRORS as error:
    if os.path.exists(target):
      os.remove(target)  # TFF writes the download in place: drop a partial file.
    raise RuntimeError(
        f'Downloading TFF dataset {name!r} from {URL_PREFIX}{hosted.filename}.lzma '
        f'failed ({error}); without network, put the file in {os.path.dirname(target)}.'
    ) from error


def load_tff_dataset(name: str, *, cache_dir: Optional[str] = None,
                     allow_download: bool = False,
                     synthetic: bool = False) -> Tuple[ClientData, ...]:
  """Loads a TFF hosted federated dataset from the local cache.

  Returns what TFF's `load_data` returns: `(train, test)` `ClientData`, or
  `(train, heldout, test)` for 'stackoverflow'. Elements are the parsed
  `OrderedDict`s TFF yields (see the module docstring).

  Args:
    name: One of `TFF_DATASETS`: 'cifar100', 'emnist_digits', 'emnist_full',
      'shakespeare', 'stackoverflow'.
    cache_dir: Directory holding the SQLite file; None means TFF's default
      `~/.tff`, then `~/.keras/datasets`.
    allow_download: When the file is not cached, call TFF's own loader, which
      downloads it into `cache_dir` (or `~/.tff`).
    synthetic: Return TFF's `get_synthetic()` clients (a few hand-made ones,
      same element structure) for every split instead; reads no file.

  Raises:
    ValueError: If `name` is unknown, or the cached file is unreadable or
      lacks a split.
    DatasetNotCachedError: If the file is not cached and `allow_download` is
      False; the message names the file and the directory to put it in.
    RuntimeError: If the download fails.
  """
  hosted = _hosted(name)
  if synthetic:
    return tuple(hosted.get_synthetic() for _ in hosted.splits)
  path = _sqlite_file(hosted.filename, cache_dir)
  if path is not None:
    return _read(path, hosted)
  if not allow_download:
    raise _not_cached(name, cache_dir)
  return _download(name, hosted, cache_dir)


def _count_file(cache_dir: Optional[str], what: str, allow_download: bool,
                alternative: str = '') -> Optional[str]:
  """The cached `stackoverflow.<what>_count`; None to download it; else raises.

  The file is `<cache_dir or ~/.keras>/datasets/stackoverflow.<what>_count`,
  extracted from its cached `.tar.bz2` archive if needed.
  """
  directory = os.path.join(cache_dir or os.path.join(os.path.expanduser('~'), '.keras'),
                           'datasets')
  filename = f'stackoverflow.{what}_count'
  path = os.path.join(directory, filename)
  archive = path + '.tar.bz2'
  if not os.path.isfile(path) and os.path.isfile(archive):
    with tarfile.open(archive) as tar:
      tar.extractall(directory)  # As Keras' get_file(extract=True) does.
  if os.path.isfile(path):
    return path
  if allow_download:
    return None
  raise DatasetNotCachedError(
      f'Stack Overflow {what} counts are not cached: expected {path}; download '
      f'{URL_PREFIX}{filename}.tar.bz2 and put it in {directory}, or pass '
      f'allow_download=True{alternative}.')


def load_stackoverflow_vocab(vocab_size: int = 10000, *, cache_dir: Optional[str] = None,
                             allow_download: bool = False) -> List[str]:
  """The `vocab_size` most frequent Stack Overflow words, from the local cache.

  TFF's `stackoverflow.load_word_counts` downloads `stackoverflow.word_count.tar.bz2`
  with Keras into `<cache_dir>/datasets` (`~/.keras/datasets` by default) and
  extracts `stackoverflow.word_count` there: one `word count` line per word,
  most frequent first. This reads that file (extracting a cached archive if
  needed) without network. The baselines use the first 10,000 words.

  Args:
    vocab_size: How many words to return.
    cache_dir: The Keras cache directory; None means `~/.keras`.
    allow_download: When the file is not cached, call TFF's `load_word_counts`.

  Raises:
    ValueError: If `vocab_size` is not positive.
    DatasetNotCachedError: If the file is missing and `allow_download` is False.
  """
  if vocab_size < 1:
    raise ValueError(f'vocab_size must be positive, got {vocab_size}.')
  path = _count_file(cache_dir, 'word', allow_download, ' or your own vocab list')
  if path is None:
    return list(_DATASETS.stackoverflow.load_word_counts(cache_dir=cache_dir,
                                                         vocab_size=vocab_size))
  with open(path) as f:
    return [line.split()[0] for line, _ in zip(f, range(vocab_size))]


def load_stackoverflow_tags(num_tags: int = 500, *, cache_dir: Optional[str] = None,
                            allow_download: bool = False) -> List[str]:
  """The `num_tags` most frequent Stack Overflow tags, from the local cache.

  As `load_stackoverflow_vocab`, for the tag counts of TFF's
  `stackoverflow.load_tag_counts`: `<cache_dir>/datasets/stackoverflow.tag_count`
  (`~/.keras/datasets` by default, extracted from its cached `.tar.bz2` if
  needed), a JSON object from tag to count. The tags come ordered as TFF
  orders them, by count, most frequent first (ties in file order); the
  tag-prediction baseline uses the first 500. Raises ValueError if `num_tags`
  is not positive and `DatasetNotCachedError` if the file is missing and
  `allow_download` (which calls TFF's `load_tag_counts`) is False.
  """
  if num_tags < 1:
    raise ValueError(f'num_tags must be positive, got {num_tags}.')
  path = _count_file(cache_dir, 'tag', allow_download)
  if path is None:
    counts = _DATASETS.stackoverflow.load_tag_counts(cache_dir=cache_dir)
  else:
    with open(path) as f:
      counts = json.load(f)
  return sorted(counts, key=lambda tag: counts[tag], reverse=True)[:num_tags]
