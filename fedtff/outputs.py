"""Run-directory outputs that are never left half-written.

`atomic_write_text` writes to a temporary file in the same directory, fsyncs
it and renames it over the target, so a reader (or a resumed run) sees the old
file or the new one, never a torn one. `MetricsCsv` and `JsonLines` append one
fsynced row per round; on resume they drop the rows after the checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Mapping, Optional, Sequence


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write_text(path: str, text: str) -> None:
  """Replaces `path` with `text` atomically."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


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
    columns: The header; an existing file must have the same one.
    last_round: When resuming, rows after this round are dropped (they are
      recomputed); `None` starts a new file.
  """

  def __init__(self, path: str, columns: Sequence[str], *, last_round: Optional[int] = None):
    self.path = path
    self.columns = list(columns)
    header = ','.join(self.columns) + '\n'
    if last_round is None or not os.path.exists(path):
      atomic_write_text(path, header)
      return
    with open(path, newline='') as f:
      lines = f.readlines()
    if not lines or lines[0] != header:
      raise ValueError(f'{path} has other columns than this run writes; cannot resume into it.')
    kept = [l for l in lines[1:] if l.endswith('\n') and int(float(l.split(',')[0])) <= last_round]
    atomic_write_text(path, header + ''.join(kept))

  def write(self, row: Mapping[str, Any]) -> None:
    unknown = set(row) - set(self.columns)
    if unknown:
      raise ValueError(f'Metrics {sorted(unknown)} are not columns of {self.path}.')
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_cell(row.get(c)) for c in self.columns])
    _append_line(self.path, buffer.getvalue().replace('\r\n', '\n'))


class JsonLines:
  """Appends one fsynced JSON object per round; resumes like `MetricsCsv`."""

  def __init__(self, path: str, *, last_round: Optional[int] = None):
    self.path = path
    if last_round is None or not os.path.exists(path):
      atomic_write_text(path, '')
      return
    with open(path) as f:
      kept = [l for l in f if l.endswith('\n') and json.loads(l)['round'] <= last_round]
    atomic_write_text(path, ''.join(kept))

  def write(self, row: Mapping[str, Any]) -> None:
    _append_line(self.path, json.dumps(dict(row)) + '\n')


class TensorBoardScalars:
  """Writes every numeric metric as a TensorBoard scalar, step = round."""

  def __init__(self, directory: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
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


def read_metrics_csv(path: str) -> list:
  """Reads a metrics CSV into dicts: `round` an int, others floats, empty cells None."""
  with open(path, newline='') as f:
    return [{k: _parse_cell(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
