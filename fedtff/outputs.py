"""Run-directory outputs that are never left half-written.

`atomic_write_text` writes to a temporary file in the same directory, fsyncs
it and renames it over the target, so a reader (or a resumed run) sees the old
file or the new one, never a torn one. `MetricsCsv` appends one fsynced row per
round under a header fixed at creation.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from typing import Any, Mapping, Sequence


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


class MetricsCsv:
  """Appends one row per round to a CSV file whose columns are fixed."""

  def __init__(self, path: str, columns: Sequence[str]):
    self.path = path
    self.columns = list(columns)
    if not os.path.exists(path):
      atomic_write_text(path, ','.join(self.columns) + '\n')

  def write(self, row: Mapping[str, Any]) -> None:
    unknown = set(row) - set(self.columns)
    if unknown:
      raise ValueError(f'Metrics {sorted(unknown)} are not columns of {self.path}.')
    with open(self.path, 'a', newline='') as f:
      csv.writer(f).writerow([_cell(row.get(c)) for c in self.columns])
      f.flush()
      os.fsync(f.fileno())


def read_metrics_csv(path: str) -> list:
  """Reads a metrics CSV into a list of dicts of floats (empty cells: None)."""
  with open(path, newline='') as f:
    return [{k: (float(v) if v != '' else None) for k, v in row.items()}
            for row in csv.DictReader(f)]
