"""A run directory: its files, its one writer, resuming into it, and its summary.

  config.json      the resolved config
  metrics.csv      one row per round (docs/configs.md lists the columns)
  metrics.jsonl    the same rows as JSON lines
  tensorboard/     the same scalars as TensorBoard events
  checkpoints/     round-<N>.npz server-state checkpoints (fedtff.runner.checkpoints)
  summary.json     final and best metrics, rounds and total time
  .lock            held (flock) by the one process writing the directory

Rerunning a config on its own run directory resumes it; raising
`total_rounds` extends it; it may continue on the other `engine` or on other
`runtime` workers; any other change of config is refused unless the caller
asks to overwrite. docs/runner.md states the guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from typing import Any, Dict, Iterator, List, Optional, Sequence

import ml_collections

from fedtff.runner import checkpoints
from fedtff.runner import config as config_lib
from fedtff.runner import outputs

CONFIG = 'config.json'
METRICS_CSV = 'metrics.csv'
METRICS_JSONL = 'metrics.jsonl'
SUMMARY = 'summary.json'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
LOCK = '.lock'
# Keys a resumed run may change: more rounds, the engine or its XLA compilation, other
# machines to run on, or how their workers get the data; none of them changes the
# results beyond float32 rounding.
_EXTENDABLE_KEYS = ('total_rounds', 'engine', 'jit_compile', 'runtime.workers', 'runtime.connect_timeout_s',
                    'runtime.credentials', 'data.feed', 'data.feed_dir')
# Early stopping (fedtff.runner.callbacks) may change too: a stopped run is extended past its stop.
_EXTENDABLE_KEYS += tuple(k for k in config_lib.schema_defaults() if k.startswith('stop.'))


class RunDirectoryError(ValueError):
  """A run directory that cannot be run into as asked (one sentence naming why)."""


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds `workdir`'s exclusive lock: one writer per run directory.

  The lock is a `flock` on `<workdir>/.lock`, which the kernel releases when
  the holder exits in any way (SIGKILL included), so a stale lock never blocks.

  Raises:
    RunDirectoryError: If another process holds it (naming its pid).
    OSError: If `workdir` cannot be written.
  """
  outputs.ensure_writable_dir(workdir)
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise
      holder = os.pread(fd, 32, 0).decode(errors='replace').strip() or 'unknown'
      raise RunDirectoryError(
          f'{workdir} is in use by another fedtff run (pid {holder}); wait for it to end or '
          'choose another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the flock.


def _saved_config(workdir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, CONFIG)
  return outputs.read_json_object(path) if os.path.isfile(path) else None


def completed_rounds(workdir: str) -> int:
  """The round of the newest checkpoint file in `workdir` (0 if none)."""
  kept = checkpoints.rounds(os.path.join(workdir, CHECKPOINTS))
  return kept[-1] if kept else 0


def check_config(workdir: str, config: ml_collections.ConfigDict, *,
                 overwrite: bool = False) -> None:
  """Refuses `config` for `workdir` without changing anything.

  Raises:
    fedtff.runner.config.ConfigError: If `workdir` holds a run of a config that
      differs in more than `_EXTENDABLE_KEYS` (keys missing from the earlier
      config count as their defaults), and `overwrite` is False.
    RunDirectoryError: If `config.total_rounds` is below the rounds the run
      has completed (a run can be extended, not shortened), or differs from
      the run's in a DP run with `privacy.target_epsilon` (its noise
      multiplier was chosen for that length).
  """
  saved = _saved_config(workdir)
  if saved is None or overwrite:
    return
  new = json.loads(config_lib.to_json(config))
  differences = [d for d in config_lib.differences(_with_defaults(saved), new)
                 if d.partition(':')[0] not in _EXTENDABLE_KEYS]
  if differences:
    raise config_lib.ConfigError(
        f'{workdir} holds a run with another config ({"; ".join(differences)}); '
        'pass --overwrite to start it over, or choose another --workdir.')
  if (saved.get('total_rounds') != config.total_rounds and config.aggregator.kind == 'dp'
      and config.privacy.target_epsilon is not None):
    raise RunDirectoryError(
        f'{workdir} holds a run whose noise multiplier was chosen to spend at most '
        f'privacy.target_epsilon={config.privacy.target_epsilon} over total_rounds='
        f"{saved.get('total_rounds')}; other rounds would break that target. Start a new run "
        'with the target over the new length, or set aggregator.noise_multiplier.')
  done = completed_rounds(workdir)
  if config.total_rounds < done:
    raise RunDirectoryError(
        f'{workdir} holds a run with {done} completed rounds; total_rounds={config.total_rounds} '
        'cannot shorten it (raise total_rounds to extend it, or pass --overwrite).')


def _clear(workdir: str) -> None:
  from fedtff.privacy import run_privacy  # pylint: disable=g-import-not-at-top (import cycle)
  for name in (METRICS_CSV, METRICS_JSONL, SUMMARY, run_privacy.LEDGER_FILE,
               run_privacy.RERUNS_FILE):
    if os.path.exists(os.path.join(workdir, name)):
      os.remove(os.path.join(workdir, name))
  for name in (CHECKPOINTS, TENSORBOARD):
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def prepare(workdir: str, config: ml_collections.ConfigDict, *, overwrite: bool = False) -> None:
  """Makes `workdir` ready for `config`; call it holding `lock(workdir)`.

  Checks the config (`check_config`), clears the run if `overwrite`, removes
  what interrupted atomic writes left and writes config.json.
  """
  check_config(workdir, config, overwrite=overwrite)
  if overwrite:
    _clear(workdir)
  outputs.remove_partial_files(workdir)
  outputs.remove_partial_files(os.path.join(workdir, CHECKPOINTS))
  outputs.atomic_write_text(os.path.join(workdir, CONFIG), config_lib.to_json(config) + '\n')


def completed_summary(workdir: str, config: ml_collections.ConfigDict) -> Optional[Dict[str, Any]]:
  """The summary of a run of `config` in `workdir` that finished all its rounds, or
  stopped early (`fedtff.runner.callbacks`) at its newest checkpoint; else None."""
  saved, summary_path = _saved_config(workdir), os.path.join(workdir, SUMMARY)
  if saved is None or not os.path.isfile(summary_path):
    return None
  if config_lib.differences(_with_defaults(saved), json.loads(config_lib.to_json(config))):
    return None
  summary = outputs.read_json_object(summary_path)
  done = summary.get('rounds_completed') == completed_rounds(workdir) and (
      summary.get('rounds_completed') == config.total_rounds
      or summary.get('stopped', {}).get('round') == summary.get('rounds_completed'))
  return summary if done else None


def _with_defaults(old_config: Dict[str, Any]) -> Dict[str, Any]:
  """An earlier run's config, with the schema's defaults for keys added since."""
  defaults = json.loads(json.dumps(config_lib.schema_defaults()))  # Tuples as in JSON.
  return dict(defaults, **dict(config_lib.leaves(old_config)))


def _rows_through(rows: List[Dict[str, Any]], last_round: int) -> Optional[List[Dict[str, Any]]]:
  """`rows` of rounds 1..last_round, if it has each of them once, in order; else None."""
  kept = [row for row in rows if row['round'] <= last_round]
  return kept if [row['round'] for row in kept] == list(range(1, last_round + 1)) else None


def last_written_round(workdir: str) -> int:
  """The last round with a row in metrics.csv or metrics.jsonl, or 0.

  A row torn by a crash mid-append counts as written (its round is one after
  the file's last whole row): part of it may have been read.
  """
  last = 0
  for name, read in ((METRICS_JSONL, outputs.read_metrics_jsonl),
                     (METRICS_CSV, outputs.read_metrics_csv)):
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
      continue
    rows = read(path)
    whole = rows[-1]['round'] if rows else 0
    with open(path, 'rb') as f:
      content = f.read()
    torn = (bool(content) and not content.endswith(b'\n')
            and (name == METRICS_JSONL or b'\n' in content))  # A CSV's header is whole.
    last = max(last, whole + (1 if torn else 0))
  return last


def resumed_rows(workdir: str, last_round: int, *, rounds_per_eval: int,
                 total_rounds: int) -> List[Dict[str, Any]]:
  """The metric rows a run resumed from round `last_round`'s checkpoint keeps.

  Rows after the checkpoint are dropped (they are recomputed). The rows come
  from metrics.jsonl, or from metrics.csv if the JSON lines are missing or
  short. If `last_round` was evaluated only because it was the last round of
  a shorter run, its evaluation cells are cleared, as a straight run to
  `total_rounds` would not evaluate it.

  Raises:
    RunDirectoryError: If neither file holds every round up to `last_round`.
  """
  if last_round == 0:
    return []
  sources = ((METRICS_JSONL, outputs.read_metrics_jsonl), (METRICS_CSV, outputs.read_metrics_csv))
  for name, read in sources:
    path = os.path.join(workdir, name)
    rows = _rows_through(read(path), last_round) if os.path.isfile(path) else None
    if rows is not None:
      break
  else:
    raise RunDirectoryError(
        f'{workdir} has a checkpoint at round {last_round} but neither {METRICS_JSONL} nor '
        f'{METRICS_CSV} holds every round up to it; restore them, or pass --overwrite to start '
        'over.')
  if last_round % rounds_per_eval and last_round < total_rounds:
    rows[-1] = {k: (None if k.startswith('eval/') else v) for k, v in rows[-1].items()}
  return rows


@contextlib.contextmanager
def metric_writers(workdir: str, columns: Sequence[str], *, rows: Sequence[Dict[str, Any]] = (),
                   tensorboard: bool = True) -> Iterator[list]:
  """Yields the writers of one row per round, after rewriting every file with `rows`."""
  writers = [outputs.MetricsCsv(os.path.join(workdir, METRICS_CSV), columns, rows=rows).write,
             outputs.JsonLines(os.path.join(workdir, METRICS_JSONL), rows=rows).write]
  board = None
  if tensorboard:
    board = outputs.TensorBoardScalars(os.path.join(workdir, TENSORBOARD), rows=rows)
    writers.append(board.write)
  try:
    yield writers
  finally:
    if board:
      board.close()


def best_metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
  """Each `eval/<name>` column of known direction (`outputs.better`): best value and round.

  With per-client evaluation (`eval/<name>/<statistic>` columns,
  `fedtff.runner.client_metrics`), `clients` holds that round's statistics.
  """
  best = {}
  for column in rows[0] if rows else ():
    pick = outputs.better(column)
    values = [(row[column], row['round'], row) for row in rows if row.get(column) is not None]
    if column.startswith('eval/') and column.count('/') == 1 and pick and values:
      value, round_num, row = pick(values, key=lambda entry: entry[0])
      best[column] = {'value': value, 'round': int(round_num)}
      clients = {k.rpartition('/')[2]: v for k, v in row.items()
                 if k.startswith(column + '/') and v is not None}
      if clients:
        best[column]['clients'] = clients
  return best


def write_summary(workdir: str, *, total_time_s: float,
                  extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Summarizes metrics.csv into summary.json and returns the summary."""
  rows = outputs.read_metrics_csv(os.path.join(workdir, METRICS_CSV))
  final = {k: v for k, v in rows[-1].items() if v is not None} if rows else {}
  summary = {
      'final': final,
      'best': best_metrics(rows),
      'rounds_completed': int(final.get('round', 0)),
      'total_time_s': total_time_s,
      **(extra or {}),
  }
  outputs.write_json(os.path.join(workdir, SUMMARY), summary)
  return summary
