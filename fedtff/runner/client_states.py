"""Per-client state, keyed by client id, held by the runner for stateful algorithms.

SCAFFOLD (Karimireddy et al., ICML 2020, arXiv 1910.06378) keeps a control
variate c_i on every client; the runner holds it between the client's rounds.
`ClientStateStore` holds one float32 row of `state_size` values per client of
a fixed population (the task's training clients). A client never seen has
zero state, and no row is written for it:

* in memory (`on_disk=False`): one `[num_clients, state_size]` NumPy array;
* on disk (`on_disk=True`): the same array as a memory-mapped file,
  `<directory>/rows.f32`, created sparse (`truncate`), so the file system
  stores only the pages of the clients that trained; memory holds only the
  pages the operating system caches.

Exact resume. The rows a round writes are pending (in memory) until the
runner saves a checkpoint. `write_journal(round_num)` then writes them, with
the rows they replace, to `<directory>/journal-<round>.npz` (temp file,
fsync, rename: never half-written); the runner writes the server checkpoint
after it, and `apply(round_num)` copies the journal into the rows. A `kill`
between any two steps loses nothing: `restore(round_num)`, given the round of
the server checkpoint the run resumed from, redoes the journals up to it and
undoes (from the rows they replaced) those after it. The in-memory store
keeps every journal and replays them from zero at restore; the on-disk store
records the last journal applied in `<directory>/applied.json` and removes
journals no kept checkpoint needs (`prune`).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from fedtff.runner import outputs

ROWS_FILE, APPLIED_FILE = 'rows.f32', 'applied.json'
_JOURNAL = re.compile(r'journal-(\d+)\.npz$')


def _journal_path(directory: str, round_num: int) -> str:
  return os.path.join(directory, f'journal-{round_num:06d}.npz')


class ClientStateStore:
  """One float32 state row per client id; zero until a client's first write.

  Args:
    directory: Where the journals (and, on disk, the rows) live; created.
    client_ids: The population, in a fixed order (the task's training clients).
    state_size: The number of float32 values per client.
    on_disk: Hold the rows in a memory-mapped sparse file instead of memory.
  """

  def __init__(self, directory: str, client_ids: Sequence[str], state_size: int, *,
               on_disk: bool = False):
    if state_size < 1:
      raise ValueError(f'state_size must be positive, got {state_size}.')
    os.makedirs(directory, exist_ok=True)
    self._directory = directory
    self._index = {client_id: row for row, client_id in enumerate(client_ids)}
    if len(self._index) != len(client_ids):
      raise ValueError('client_ids must be distinct.')
    self.state_size = int(state_size)
    self.on_disk = on_disk
    self._rows = self._open_rows(len(client_ids)) if on_disk else np.zeros(
        [len(client_ids), state_size], np.float32)
    self._pending: Dict[int, np.ndarray] = {}

  @property
  def num_clients(self) -> int:
    return len(self._index)

  def _open_rows(self, num_clients: int) -> np.memmap:
    path = os.path.join(self._directory, ROWS_FILE)
    size = num_clients * self.state_size * 4
    if not os.path.exists(path):
      with open(path, 'wb') as f:
        f.truncate(size)  # Sparse: no block is written until a row is.
    elif os.path.getsize(path) != size:
      raise ValueError(f'{path} holds {os.path.getsize(path)} bytes, expected {size} '
                       f'({num_clients} clients x {self.state_size} float32 values).')
    return np.memmap(path, np.float32, 'r+', shape=(num_clients, self.state_size))

  def _rows_of(self, client_ids: Iterable[str]) -> List[int]:
    try:
      return [self._index[client_id] for client_id in client_ids]
    except KeyError as e:
      raise KeyError(f'Client {e.args[0]!r} is not in this store\'s population.') from None

  def get(self, client_ids: Sequence[str]) -> np.ndarray:
    """The clients' states, `[len(client_ids), state_size]` float32 (zeros if never set)."""
    out = np.empty([len(client_ids), self.state_size], np.float32)
    for i, row in enumerate(self._rows_of(client_ids)):
      out[i] = self._pending[row] if row in self._pending else self._rows[row]
    return out

  def put(self, client_ids: Sequence[str], states: np.ndarray) -> None:
    """Sets the clients' states (pending until the next `write_journal`)."""
    states = np.asarray(states, np.float32)
    if states.shape != (len(client_ids), self.state_size):
      raise ValueError(f'states must have shape ({len(client_ids)}, {self.state_size}), '
                       f'got {states.shape}.')
    for row, state in zip(self._rows_of(client_ids), states):
      self._pending[row] = state.copy()

  def write_journal(self, round_num: int) -> str:
    """Writes the pending rows (and the rows they replace) as round `round_num`'s journal."""
    rows = np.array(sorted(self._pending), np.int64)
    after = (np.stack([self._pending[r] for r in rows]) if len(rows)
             else np.zeros([0, self.state_size], np.float32))
    before = np.asarray(self._rows[rows]) if len(rows) else after.copy()
    path = _journal_path(self._directory, round_num)
    outputs.atomic_write(path, lambda f: np.savez(f, rows=rows, before=before, after=after),
                         binary=True, sync_directory=True)
    return path

  def apply(self, round_num: int) -> None:
    """Copies round `round_num`'s journal into the rows; clears the pending rows."""
    if self.on_disk:
      self._set_applied(round_num, applying=True)
    self._redo(round_num)
    self._pending.clear()
    if self.on_disk:
      self._rows.flush()
      self._set_applied(round_num)

  def save(self, round_num: int) -> None:
    """`write_journal` then `apply`, for callers with no checkpoint between them."""
    self.write_journal(round_num)
    self.apply(round_num)

  def journals(self) -> List[int]:
    """The rounds that have a journal, ascending."""
    found = [_JOURNAL.search(p) for p in glob.glob(os.path.join(self._directory, 'journal-*'))]
    return sorted(int(m.group(1)) for m in found if m)

  def restore(self, round_num: int) -> None:
    """Sets every row to its value after round `round_num` (0: all zero), as saved.

    Journals after `round_num` (written before a checkpoint that was never
    written, or whose checkpoint was damaged) are undone and removed; at 0
    every file of the store is removed and every row is zero.
    """
    self._pending.clear()
    if round_num == 0:  # A run from the start: no journal or row of an earlier run is kept.
      self._reset()
    elif self.on_disk:
      self._restore_on_disk(round_num)
    else:  # New zeros (calloc: no page is touched until a row is written).
      self._rows = np.zeros_like(self._rows)
      for journal in self.journals():
        if journal <= round_num:
          self._redo(journal)
    for journal in self.journals():
      if journal > round_num:
        os.remove(_journal_path(self._directory, journal))

  def _reset(self) -> None:
    for path in glob.glob(os.path.join(self._directory, '*')):
      if os.path.isfile(path) and not path.endswith(ROWS_FILE):
        os.remove(path)
    if self.on_disk:
      num_clients = self.num_clients
      del self._rows
      os.remove(os.path.join(self._directory, ROWS_FILE))
      self._rows = self._open_rows(num_clients)
    else:
      self._rows = np.zeros_like(self._rows)

  def _restore_on_disk(self, round_num: int) -> None:
    applied = self._applied()
    if applied.get('applying'):  # Killed mid-apply: finish it (rows are written absolutely).
      self._redo(applied['round'])
    current = applied.get('round', 0)
    for journal in reversed(self.journals()):
      if round_num < journal <= current:
        self._undo(journal)
    for journal in self.journals():
      if current < journal <= round_num:
        self._redo(journal)
    self._rows.flush()
    self._set_applied(round_num)

  def prune(self, kept_rounds: Sequence[int]) -> None:
    """On disk: removes the journals at or before the oldest kept checkpoint's round,
    which no restore needs (the rows hold them). In memory every journal is kept."""
    if not self.on_disk or not kept_rounds:
      return
    oldest = min(kept_rounds)
    for journal in self.journals():
      if journal <= oldest and journal <= self._applied().get('round', 0):
        os.remove(_journal_path(self._directory, journal))

  def _load(self, round_num: int) -> Mapping[str, np.ndarray]:
    path = _journal_path(self._directory, round_num)
    if not os.path.exists(path):
      raise FileNotFoundError(f'The client-state journal of round {round_num} ({path}) is '
                              'missing; the store cannot be restored to that round.')
    with np.load(path) as saved:
      return {k: saved[k] for k in saved.files}

  def _redo(self, round_num: int) -> None:
    journal = self._load(round_num)
    self._rows[journal['rows']] = journal['after']

  def _undo(self, round_num: int) -> None:
    journal = self._load(round_num)
    self._rows[journal['rows']] = journal['before']

  def _applied(self) -> Dict[str, int]:
    path = os.path.join(self._directory, APPLIED_FILE)
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      return json.load(f)

  def _set_applied(self, round_num: int, *, applying: bool = False) -> None:
    text = json.dumps({'round': round_num, 'applying': applying}).encode()
    outputs.atomic_write(os.path.join(self._directory, APPLIED_FILE), lambda f: f.write(text),
                         binary=True, sync_directory=True)

  def disk_bytes(self) -> int:
    """Bytes the store's files occupy on disk (allocated blocks; sparse holes excluded)."""
    return sum(os.stat(p).st_blocks * 512
               for p in glob.glob(os.path.join(self._directory, '*')) if os.path.isfile(p))

  def memory_bytes(self) -> int:
    """Bytes the store holds in memory: the rows (in memory) and the pending rows."""
    pending = len(self._pending) * self.state_size * 4
    return pending + (0 if self.on_disk else self._rows.nbytes)


def choose_on_disk(num_clients: int, state_size: int, *,
                   memory_limit_bytes: int = 1 << 30) -> bool:
  """Whether a population's states go on disk: when they exceed `memory_limit_bytes` (1 GiB)."""
  return num_clients * state_size * 4 > memory_limit_bytes
