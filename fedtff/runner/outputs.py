"""Run-directory outputs that are never left half-written.

`atomic_write_text` writes to a temporary file in the same directory, fsyncs
it and renames it over the target, so a reader (or a resumed run) sees the old
file or the new one, never a torn one. `MetricsCsv` and `JsonLines` append one
fsynced row per round, and start from the rows a resumed run keeps.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Mapping, Sequence

# Which way each metric improves, by its last name part ('eval/loss' -> 'loss'):
# the best rounds in summary.json, the worst client, and early stopping read it.
_BETTER = {'accuracy': max, 'loss': min, 'mse': min, 'recall_at_5': max, 'precision_at_5': max}
# stop.mode (fedtff.runner.callbacks): which way the metric improves; 'auto' reads it off the name.
DIRECTION_MODES = ('auto', 'max', 'min')


def better(metric: str):
  """`max` or `min`: which of two values of `metric` (e.g. 'eval/loss') is better; None if unknown."""
  return _BETTER.get(metric.rpartition('/')[2])


def direction(metric: str, mode: str = 'auto'):
  """'max' or 'min': which way `metric` improves under `mode` (`DIRECTION_MODES`); None if unknown."""
  if mode != 'auto':
    return mode
  pick = better(metric)
  return None if pick is None else pick.__name__



def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write(path: str, write_fn: Callable[[IO], None], *, binary: bool = False,
                 sync_directory: bool = False) -> None:
  """Replaces `path` atomically with what `write_fn(file)` writes.

  The bytes go to a temporary file in the same directory, are fsynced, and the
  file is renamed over `path`; an exception leaves `path` as it was. With
  `sync_directory` the directory is fsynced too, so the rename survives a
  power loss (the per-client state store's journals).
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  if sync_directory:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)


def atomic_write_text(path: str, text: str) -> None:
  """Replaces `path` with `text` atomically."""
  atomic_write(path, lambda f: f.write(text))


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON, atomically."""
  atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def ensure_writable_dir(path: str) -> str:
  """Creates `path` if needed; raises `OSError` with a sentence if not writable."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=path, prefix='.write-test-')
    probe.close()
  except OSError as e:
    raise OSError(f'Cannot write to the run directory {path}: {e.strerror or e}.') from None
  return path


def _cell(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float) and math.isfinite(value):
    return repr(value)
  return str(value)


def _append_line(path: str, line: str) -> None:
  with open(path, 'a') as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


class MetricsCsv:
  """Appends one fsynced row per round to a CSV file whose columns are fixed.

  Args:
    path: The CSV file.
    columns: The header.
    rows: The rows it starts with (after a resume, those up to the
      checkpoint); the file is rewritten atomically with them.
  """

  def __init__(self, path: str, columns: Sequence[str], *, rows: Sequence[Mapping[str, Any]] = ()):
    self.path = path
    self.columns = list(columns)
    atomic_write_text(path, ''.join([_csv_line(self.columns)] +
                                    [self._line(row) for row in rows]))

  def _line(self, row: Mapping[str, Any]) -> str:
    unknown = set(row) - set(self.columns)
    if unknown:
      raise ValueError(f'Metrics {sorted(unknown)} are not columns of {self.path}.')
    return _csv_line([_cell(row.get(c)) for c in self.columns])

  def write(self, row: Mapping[str, Any]) -> None:
    _append_line(self.path, self._line(row))


def _csv_line(cells: Sequence[str]) -> str:
  buffer = io.StringIO()
  csv.writer(buffer).writerow(cells)
  return buffer.getvalue().replace('\r\n', '\n')


class JsonLines:
  """Appends one fsynced JSON object per round; starts with `rows` like `MetricsCsv`."""

  def __init__(self, path: str, *, rows: Sequence[Mapping[str, Any]] = ()):
    self.path = path
    atomic_write_text(path, ''.join(_json_line(row) for row in rows))

  def write(self, row: Mapping[str, Any]) -> None:
    _append_line(self.path, _json_line(row))


def _json_line(row: Mapping[str, Any]) -> str:
  """One row as a JSON line; empty cells (None) are left out, as in a live row."""
  return json.dumps({k: v for k, v in row.items() if v is not None}) + '\n'


class TensorBoardScalars:
  """Writes every numeric metric as a TensorBoard scalar, step = round.

  Args:
    directory: The event-file directory.
    rows: The rows it starts with. The directory is replaced by one holding
      exactly these rows' scalars (built aside and renamed into place), so a
      resumed run never shows a round twice.
  """

  def __init__(self, directory: str, *, rows: Sequence[Mapping[str, Any]] = ()):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    parent = os.path.dirname(os.path.abspath(directory))
    fresh = tempfile.mkdtemp(dir=parent, prefix='.tmp-tensorboard-')
    self._writer = tf.summary.create_file_writer(fresh)
    for row in rows:
      self.write(row)
    self.close()
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(fresh, directory)
    self._writer = tf.summary.create_file_writer(directory)

  def write(self, row: Mapping[str, Any]) -> None:
    with self._writer.as_default(step=int(row['round'])):
      for name, value in row.items():
        if name != 'round' and isinstance(value, (int, float)):
          self._tf.summary.scalar(name, value)

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()


def _parse_cell(column: str, cell: str):
  if cell == '':
    return None
  return int(float(cell)) if column == 'round' else float(cell)


class MetricsFileError(ValueError):
  """A metrics file that cannot be parsed; the message names the file and line."""


def read_metrics_csv(path: str) -> list:
  """Reads a metrics CSV into dicts: `round` an int, others floats, empty cells None.

  Raises:
    MetricsFileError: If a line cannot be parsed (naming the file and line).
  """
  with open(path, newline='') as f:
    lines = f.readlines()
  if lines and not lines[-1].endswith('\n'):
    lines.pop()  # Torn by a crash mid-append; the round is recomputed.
  reader = csv.DictReader(lines)
  rows = []
  try:
    for row in reader:
      if None in row or None in row.values():
        raise ValueError('it has another number of cells than the header')
      rows.append({k: _parse_cell(k, v) for k, v in row.items()})
  except (ValueError, csv.Error) as e:
    raise MetricsFileError(f'{path} line {reader.line_num} cannot be parsed: {e}.') from None
  return rows


def read_metrics_jsonl(path: str) -> list:
  """Reads a metrics JSON-lines file into dicts (a torn last line is dropped).

  Raises:
    MetricsFileError: If a complete line is not a JSON object with a `round`.
  """
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.endswith('\n'):
        break  # Torn by a crash mid-append; the round is recomputed.
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get('round'), int):
          raise ValueError('expected a JSON object with an integer "round"')
      except ValueError as e:
        raise MetricsFileError(f'{path} line {number} cannot be parsed: {e}.') from None
      rows.append(row)
  return rows


def read_json_object(path: str) -> dict:
  """Reads a JSON file that must hold an object.

  Raises:
    MetricsFileError: If it is not valid JSON or not an object (naming the file).
  """
  with open(path) as f:
    text = f.read()
  try:
    value = json.loads(text)
  except ValueError as e:
    raise MetricsFileError(f'{path} is not valid JSON: {e}.') from None
  if not isinstance(value, dict):
    raise MetricsFileError(f'{path} must hold a JSON object, got {type(value).__name__}.')
  return value


def remove_partial_files(directory: str) -> None:
  """Deletes the `.tmp-*` files and directories an interrupted atomic write left."""
  for path in glob.glob(os.path.join(directory, '.tmp-*')):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
