"""Writing SQLite files in the format TFF's `SqlClientData` reads.

TFF hosts its federated datasets as SQLite files with two tables:

* `examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)`,
  one row per example, the example a serialized `tf.train.Example`;
* `client_metadata (client_id TEXT, split_name TEXT, num_examples INTEGER)`,
  one row per client and split.

`write_sql_client_data` writes such a file from Python values, for test
fixtures and for putting your own data behind the same loader. It adds an
index on `(client_id, split_name)`, the columns of TFF's per-client query.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
from typing import Any, Iterable, Mapping, Tuple

import numpy as np
import tensorflow as tf

Row = Tuple[str, str, Mapping[str, Any]]

_SCHEMA = (
    'CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, '
    'serialized_example_proto BLOB NOT NULL);',
    'CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, '
    'num_examples INTEGER NOT NULL);',
    'CREATE INDEX examples_by_client ON examples (client_id, split_name);',
)


def _feature(value: Any) -> tf.train.Feature:
  if isinstance(value, (str, bytes)):
    value = value.encode() if isinstance(value, str) else value
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
  array = np.asarray(value)
  if np.issubdtype(array.dtype, np.floating):
    return tf.train.Feature(float_list=tf.train.FloatList(value=array.ravel()))
  if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=array.ravel()))
  raise TypeError(f'Cannot store a value of dtype {array.dtype} in a tf.train.Example.')


def serialize_example(features: Mapping[str, Any]) -> bytes:
  """Returns a serialized `tf.train.Example` of named values.

  Strings become bytes features, float arrays float features and integer
  arrays int64 features, flattened (the reader's parse spec restores shapes).
  """
  feature = {name: _feature(value) for name, value in features.items()}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_sql_client_data(path: str, rows: Iterable[Row]) -> None:
  """Writes `(split_name, client_id, features)` rows to a new SQLite file.

  Args:
    path: Where to write; the file must not exist yet.
    rows: One `(split_name, client_id, features)` triple per example, features
      a mapping from feature name to value (see `serialize_example`).

  Raises:
    FileExistsError: If `path` exists.
  """
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; write_sql_client_data only creates new files.')
  counts = collections.Counter()
  with contextlib.closing(sqlite3.connect(path)) as connection, connection:
    for statement in _SCHEMA:
      connection.execute(statement)
    for split_name, client_id, features in rows:
      connection.execute('INSERT INTO examples VALUES (?, ?, ?);',
                         (split_name, client_id, serialize_example(features)))
      counts[(client_id, split_name)] += 1
    connection.executemany('INSERT INTO client_metadata VALUES (?, ?, ?);',
                           [(c, s, n) for (c, s), n in counts.items()])
