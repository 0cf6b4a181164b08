"""Grid sweeps: one run directory per point of a cartesian grid of overrides.

  grid = sweeps.parse_grid(['server.learning_rate=0.1,1.0', 'seed=0,1'])
  rows = sweeps.run_sweep(config, 'runs/sweep', grid)

Each point overrides some fields of a base config and runs into
`<root>/<name>`, where the name lists its overrides in key order, e.g.
`seed=0,server.learning_rate=0.1`. Points run one after another with
`fedtff.run_experiment`, so a partly run point resumes from its checkpoint and
a complete one (summary.json has all `total_rounds`, config.json the same
config) is skipped. A point whose training diverges is recorded as such and
the sweep goes on. After every point `<root>/sweep.csv` and `<root>/sweep.md`
list one row per point so far: the override values, the status, the final
evaluation accuracy and loss, the best evaluation accuracy and its round, and
the training time.

The sweep also opens in TensorBoard's HParams dashboard
(`tensorboard --logdir <root>/hparams`): `<root>/hparams` holds the grid's
keys and values, and `<root>/hparams/<point name>` each point's overrides
with its final and best evaluation metrics, its rounds and time, rewritten
after every point. At the end `<root>/sweep.png` draws one metric (by default
`eval/accuracy`) against round for every point that has rows.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import csv
import io
import itertools
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import ml_collections

from fedtff.runner import config as config_lib
from fedtff.runner import experiment
from fedtff.runner import outputs
from fedtff.research import plots
from fedtff.runner import run_dir
from fedtff.runner import training
from fedtff.runner import user_task

Grid = List[Tuple[str, List[Any]]]
Point = Dict[str, Any]
SWEEP_CSV = 'sweep.csv'
SWEEP_MD = 'sweep.md'
HPARAMS = 'hparams'
SWEEP_PNG = 'sweep.png'
DEFAULT_METRIC = 'eval/accuracy'
RESULT_COLUMNS = ('status', 'final_eval_accuracy', 'final_eval_loss', 'best_eval_accuracy',
                  'best_eval_accuracy_round', 'total_time_s', 'engine')


def _parse_bool(text: str) -> bool:
  if text.lower() not in ('true', 'false'):
    raise ValueError(text)
  return text.lower() == 'true'


def _parse_tuple(text: str) -> tuple:
  value = ast.literal_eval(text)
  if not isinstance(value, (tuple, list)):
    raise ValueError(text)
  return tuple(value)


def _parser(default: Any) -> Callable[[str], Any]:
  if default is None:
    return lambda text: None if text.lower() == 'none' else float(text)
  if isinstance(default, bool):
    return _parse_bool
  if isinstance(default, (tuple, list)):
    return _parse_tuple
  return type(default)


def parse_value(key: str, text: str) -> Any:
  """Parses `text` as the schema type of `key`, e.g. '0.1' for a float field.

  Raises:
    fedtff.runner.config.ConfigError: If `text` is not such a value.
  """
  try:
    parse = str if config_lib.takes_string(key) else _parser(config_lib.schema_defaults()[key])
    return parse(text.strip())
  except (ValueError, SyntaxError):
    raise config_lib.ConfigError(
        f'Config key {key} must be {config_lib.describe_type(key)}, got {text!r}.') from None


def _split_values(text: str) -> List[str]:
  """Splits `a,b,(1,2)` at the commas outside parentheses and brackets."""
  values, current, depth = [], '', 0
  for char in text:
    depth += {'(': 1, '[': 1, ')': -1, ']': -1}.get(char, 0)
    if char == ',' and depth == 0:
      values.append(current)
      current = ''
    else:
      current += char
  return values + [current]


def _check_field(key: str) -> None:
  config_lib.check_key(key)
  if key not in config_lib.schema_defaults():
    raise config_lib.ConfigError(
        f'Config key {key} is a group; give one of its fields, e.g. {key}.<field>=...')


def _parse_entry(spec: str) -> Tuple[str, List[Any]]:
  key, _, text = (part.strip() for part in spec.partition('='))
  if not key or not text:
    raise config_lib.ConfigError(
        f'Grid entry {spec!r} must look like key=value1,value2, e.g. seed=0,1.')
  _check_field(key)
  values = [parse_value(key, value) for value in _split_values(text)]
  if len({format_value(v) for v in values}) < len(values):
    raise config_lib.ConfigError(f'Config key {key} lists a value twice in the grid: {text}.')
  return key, values


def parse_grid(specs: Sequence[str]) -> Grid:
  """Parses `key=value1,value2,...` strings into `[(key, [values])]`.

  Values take the schema type of their key; a tuple value is written in
  parentheses, e.g. `model.hidden_units=(64,),(64,32)`.

  Raises:
    fedtff.runner.config.ConfigError: For an empty grid, an entry without `=`, an
      unknown key or a group, a key given twice, a value of the wrong type or
      a value listed twice.
  """
  if not specs:
    raise config_lib.ConfigError('The grid is empty; give at least one key=value1,value2.')
  grid = [_parse_entry(spec) for spec in specs]
  keys = [key for key, _ in grid]
  for key in keys:
    if keys.count(key) > 1:
      raise config_lib.ConfigError(f'Config key {key} is given twice in the grid.')
  return grid


def expand(grid: Grid) -> List[Point]:
  """Every combination of the grid's values, the first key varying slowest."""
  keys = [key for key, _ in grid]
  return [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in grid))]


def format_value(value: Any) -> str:
  """A value as it appears in run names and tables, e.g. 0.1, true, (64,32)."""
  if isinstance(value, bool) or value is None:
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return repr(tuple(value)).replace(' ', '')
  return str(value).replace(os.sep, '_')


def point_name(point: Point) -> str:
  """The run directory name of a point: `key=value` in key order, comma-separated."""
  return ','.join(f'{key}={format_value(point[key])}' for key in sorted(point))


def point_config(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """A validated copy of `config` with the point's overrides applied."""
  config = copy.deepcopy(config)
  for key, value in point.items():
    *groups, field = key.split('.')
    parent = config
    for group in groups:
      parent = parent[group]
    parent[field] = value
  config_lib.validate(config)
  return config


def is_complete(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds a run of `config` that finished all its rounds."""
  return run_dir.completed_summary(workdir, config) is not None


def run_results(workdir: str, status: str) -> Dict[str, Any]:
  """The summary of a run: summary.json, or for a diverged run one from metrics.csv."""
  if status == 'complete':
    return outputs.read_json_object(os.path.join(workdir, run_dir.SUMMARY))
  rows = outputs.read_metrics_csv(os.path.join(workdir, run_dir.METRICS_CSV))
  return {'final': rows[-1] if rows else {}, 'best': run_dir.best_metrics(rows),
          'total_time_s': None}


def table_row(point: Point, summary: Dict[str, Any], status: str) -> Dict[str, Any]:
  """One row of the sweep table: the run name, its overrides and its results."""
  final, best = summary['final'], summary['best'].get('eval/accuracy', {})
  results = (status, final.get('eval/accuracy'), final.get('eval/loss'), best.get('value'),
             best.get('round'), summary['total_time_s'], summary.get('engine'))
  return {'run': point_name(point), **{key: point[key] for key in sorted(point)},
          **dict(zip(RESULT_COLUMNS, results))}


def _csv_cell(value: Any) -> str:
  if value is None:
    return ''
  return repr(value) if isinstance(value, float) else format_value(value)


def _md_cell(column: str, value: Any) -> str:
  if isinstance(value, float) and column in RESULT_COLUMNS:
    return f'{value:.1f}' if column == 'total_time_s' else f'{value:.4f}'
  return _csv_cell(value)


def write_table(root: str, rows: Sequence[Dict[str, Any]]) -> None:
  """Writes the rows to `<root>/sweep.csv` and `<root>/sweep.md`, atomically."""
  columns = list(rows[0])
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(columns)
  writer.writerows([_csv_cell(row[c]) for c in columns] for row in rows)
  outputs.atomic_write_text(os.path.join(root, SWEEP_CSV), buffer.getvalue())
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_md_cell(c, row[c]) for c in columns) + ' |' for row in rows]
  outputs.atomic_write_text(os.path.join(root, SWEEP_MD), '\n'.join(lines) + '\n')


def _hparam_values(values: Sequence[Any]) -> List[Any]:
  """A grid key's values as HParams values: numbers, strings or booleans of one type."""
  kinds = {bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else None
           for v in values}
  if kinds == {bool}:
    return list(values)
  if kinds == {float}:
    return [float(v) for v in values]
  return [format_value(v) for v in values]


def hparams_metrics(summary: Dict[str, Any]) -> Dict[str, float]:
  """The numbers of a run's summary the HParams dashboard shows: `final/eval/<name>`,
  `best/eval/<name>`, `rounds_completed`, `total_time_s` (those present)."""
  metrics = {f'final/{k}': v for k, v in summary['final'].items() if k.startswith('eval/')}
  metrics.update({f'best/{k}': v['value'] for k, v in summary['best'].items()})
  metrics['rounds_completed'] = summary.get('rounds_completed', summary['final'].get('round'))
  metrics['total_time_s'] = summary['total_time_s']
  return {k: float(v) for k, v in metrics.items() if v is not None}


def write_hparams(root: str, grid: Grid, points: Sequence[Point],
                  summaries: Sequence[Dict[str, Any]]) -> None:
  """Writes `<root>/hparams` for TensorBoard's HParams dashboard, replacing it.

  Args:
    root: The sweep directory.
    grid: The grid (its keys and values become the dashboard's hyperparameters).
    points: The points run so far.
    summaries: Their summaries (`run_results`), in the same order.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  values = {key: dict(zip(map(format_value, vs), _hparam_values(vs))) for key, vs in grid}
  hparams = {key: hp.HParam(key, hp.Discrete(list(values[key].values()))) for key, _ in grid}
  metric_names = sorted({name for s in summaries for name in hparams_metrics(s)})
  fresh = tempfile.mkdtemp(dir=root, prefix='.tmp-hparams-')
  with _summary_writer(tf, fresh):
    hp.hparams_config(hparams=list(hparams.values()),
                      metrics=[hp.Metric(name) for name in metric_names])
  for point, summary in zip(points, summaries):
    with _summary_writer(tf, os.path.join(fresh, point_name(point))):
      hp.hparams({hparams[k]: values[k][format_value(v)] for k, v in point.items()},
                 trial_id=point_name(point))
      for name, value in hparams_metrics(summary).items():
        tf.summary.scalar(name, value, step=0)
  shutil.rmtree(os.path.join(root, HPARAMS), ignore_errors=True)
  os.rename(fresh, os.path.join(root, HPARAMS))


@contextlib.contextmanager
def _summary_writer(tf, directory: str) -> Iterator[None]:
  """A TensorFlow summary writer for `directory` as the default, closed on exit."""
  writer = tf.summary.create_file_writer(directory)
  try:
    with writer.as_default():
      yield
  finally:
    writer.close()


def check_metric(metric: str) -> None:
  """Raises `ConfigError` unless `metric` looks like a metrics column ('eval/<name>')."""
  prefix, _, name = metric.partition('/')
  if prefix not in ('train', 'eval') or not name:
    raise config_lib.ConfigError(f"The sweep's metric must be a metrics column 'train/<name>' or "
                                 f"'eval/<name>', e.g. 'eval/accuracy', got {metric!r}.")


def _check_metric_is_reported(metric: str, point: user_task.Resolved) -> None:
  """Refuses a metric that a point's own metrics (`model.metrics`) do not report.

  Runs of built-in metrics, or of a user's learning process (whose metrics
  only its run shows), are checked after they ran (`write_plot`).
  """
  if point.task is None or point.task.metrics_fn is None or point.process is not None:
    return
  names = user_task.metric_names(point.task.metrics_fn)
  if metric.partition('/')[2].split('/')[0] not in names + list(_COUNTERS):
    raise config_lib.ConfigError(
        f"The sweep's metric {metric!r} is not a column of these runs: model.metrics "
        f"{point.config.model.metrics!r} reports {', '.join(names)} (with "
        f"{', '.join(_COUNTERS)}); choose one, e.g. eval/{names[0] if names else 'loss'}.")


# The columns every run reports beside its Keras metrics (TFF's `loss` and counters).
_COUNTERS = ('loss', 'num_examples', 'num_batches')


def write_plot(root: str, run_dirs: Sequence[str], metric: str) -> Optional[str]:
  """Draws `metric` against round for every run with rows into `<root>/sweep.png`.

  Returns:
    The PNG's path, or None if no run has rows yet.

  Raises:
    ValueError: If a run has no column `metric` (naming its columns).
  """
  with_rows = [d for d in run_dirs if os.path.isfile(os.path.join(d, run_dir.METRICS_CSV))
               and outputs.read_metrics_csv(os.path.join(d, run_dir.METRICS_CSV))]
  if not with_rows:
    return None
  figure = plots.plot_runs(with_rows, metrics=[metric])
  figure.suptitle(f'{metric} of {len(with_rows)} sweep points')
  path = os.path.join(root, SWEEP_PNG)
  fd, tmp_path = tempfile.mkstemp(dir=root, prefix='.tmp-', suffix='.png')
  os.close(fd)
  figure.savefig(tmp_path, dpi=100)
  os.replace(tmp_path, path)
  return path


def _run_point(config, workdir: str, progress_fn, log, user: Dict[str, Any],
               recorded: ml_collections.ConfigDict) -> str:
  """Runs one point unless complete (`recorded`: its config as config.json has it);
  returns 'complete' or 'diverged'."""
  if is_complete(workdir, recorded):
    log('skipped, already complete')
    return 'complete'
  log('running')
  try:
    experiment.run_experiment(config, workdir, progress_fn=progress_fn, **user)
  except training.TrainingDivergedError as e:
    log(str(e))
    return 'diverged'
  return 'complete'


def run_sweep(config: ml_collections.ConfigDict, root: str, grid: Grid, *,
              task: Optional[user_task.UserTask] = None,
              process: Optional[user_task.ProcessLike] = None,
              make_progress_fn: Optional[Callable[[ml_collections.ConfigDict],
                                                  Optional[experiment.ProgressFn]]] = None,
              log_fn: Optional[Callable[[str], None]] = None,
              metric: str = DEFAULT_METRIC) -> List[Dict[str, Any]]:
  """Runs every point of `grid` over `config`, each into `<root>/<point name>`.

  Args:
    config: The base experiment config; each point overrides some fields.
    root: The sweep directory; created if needed.
    grid: Keys and values, as `parse_grid` returns them.
    task: Your own task for every point (`fedtff.run_experiment`'s `task`).
    process: Your own learning process for every point (`process` there).
    make_progress_fn: Maps a point's config to the `progress_fn` of its run.
    log_fn: Called with one line per point: run, skipped or diverged.
    metric: The metrics column `<root>/sweep.png` compares the points on.

  Returns:
    The table rows, also written to `<root>/sweep.csv` and `<root>/sweep.md`;
    `<root>/hparams` (TensorBoard's HParams dashboard) and `<root>/sweep.png`
    are written too.

  Raises:
    fedtff.runner.config.ConfigError: If a point's config does not fit the schema
      or names an import path that cannot be imported or is of the wrong
      kind (checked for all points before any runs), or a point's directory
      holds a run of another config.
    OSError: If `root` cannot be written.
    ValueError: If the runs have no column `metric` (after they ran; with
      `model.metrics`, a metric those do not report is a ConfigError before
      any point runs).
  """
  check_metric(metric)
  points = expand(grid)
  configs = [point_config(config, point) for point in points]
  user = dict(task=task, process=process)
  # Every point's import paths (and the metric its own metrics report) are checked
  # before any point runs.
  resolved = [user_task.resolve(config_lib.resolve(c), **user) for c in configs]
  for point in resolved:
    _check_metric_is_reported(metric, point)
  recorded = [point.config for point in resolved]
  outputs.ensure_writable_dir(root)
  rows, summaries = [], []
  for index, (point, point_cfg, recorded_cfg) in enumerate(zip(points, configs, recorded),
                                                           start=1):
    name = point_name(point)
    log = _prefixed(log_fn, f'[{index}/{len(points)}] {name}: ')
    progress_fn = make_progress_fn(point_cfg) if make_progress_fn else None
    status = _run_point(point_cfg, os.path.join(root, name), progress_fn, log, user,
                        recorded_cfg)
    summaries.append(run_results(os.path.join(root, name), status))
    rows.append(table_row(point, summaries[-1], status))
    write_table(root, rows)
    write_hparams(root, grid, points[:index], summaries)
  write_plot(root, [os.path.join(root, point_name(p)) for p in points], metric)
  return rows


def _prefixed(log_fn: Optional[Callable[[str], None]], prefix: str) -> Callable[[str], None]:
  return lambda line: log_fn(prefix + line) if log_fn else None
