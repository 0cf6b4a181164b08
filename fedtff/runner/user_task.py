"""Your own model, data and algorithm under the runner.

`run_experiment(config, workdir, task=UserTask(...), process=...)` runs a
user's Keras model factory on the user's training and held-out `ClientData`
(with their loss, metrics and per-example preprocessing), and optionally a
user's own `tff.learning.templates.LearningProcess`, with the runner's config,
metric files, checkpoints, exact resume and sweeps. A config file names the
same objects by import path instead ('module:name'), so the scripts run them
with flags:

  model.factory     no-argument function returning a new, uncompiled Keras model
  model.loss        no-argument function returning a Keras loss (e.g. a loss class)
  model.metrics     no-argument function returning a list of Keras metrics
  data.source       no-argument function returning (train, held-out) ClientData
  data.preprocess   per-example function, element -> OrderedDict(x=..., y=...)
  algorithm.process function of TFF's model function (`tff_model_fn`) returning
                    a LearningProcess, or a LearningProcess object

`resolve` imports them, checks each is of the right kind (one line naming the
key and the path if not) and records, for objects given in Python, where they
were defined ('module:qualname'), so config.json records every import path and
a resume with another path is refused like any other config change.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import ml_collections
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.runner import config as config_lib
from fedtff import data
from fedtff import tasks
from fedtff.algorithms import tff_model

ClientData = tff.simulation.datasets.ClientData
LearningProcess = tff.learning.templates.LearningProcess
# A user's algorithm: a LearningProcess, or a function of TFF's model function
# (`tff.learning.models.VariableModel` factory) that builds one.
ProcessLike = Any

# The UserTask field (or process) each import-path key names.
TASK_KEYS = {'model.factory': 'model_fn', 'model.loss': 'loss_fn', 'model.metrics': 'metrics_fn',
             'data.source': 'data', 'data.preprocess': 'preprocess_fn'}
PROCESS_KEY = 'algorithm.process'
KEYS = tuple(TASK_KEYS) + (PROCESS_KEY,)
_EXPECTED = {
    'model.factory': 'a no-argument function returning a new, uncompiled tf.keras.Model',
    'model.loss': 'a no-argument function returning a tf.keras loss',
    'model.metrics': 'a no-argument function returning a list of tf.keras metrics',
    'data.source': 'a no-argument function returning a (train, held-out) pair of '
                   'tff.simulation.datasets.ClientData',
    'data.preprocess': 'a function of one example returning an OrderedDict(x=..., y=...)',
    PROCESS_KEY: 'a tff.learning.templates.LearningProcess, or a function of a TFF model '
                 'function returning one',
}


@dataclasses.dataclass(frozen=True)
class UserTask:
  """A research task: your Keras model on your federated data.

  Attributes:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    train_data: The training clients' raw (unbatched) examples. The runner
      batches, shuffles and repeats them per round as `config.data` says
      (`batch_size`, `client_epochs`, `shuffle_buffer`, `max_elements`,
      `drop_remainder`), seeded by `(seed, round, client)`, so a resumed run
      sees the same batches.
    test_data: The held-out clients' raw examples, evaluated every
      `rounds_per_eval` rounds in batches of `data.eval_batch_size` (0: 100).
    loss_fn: A no-argument function returning a Keras loss (a loss class
      works); None: sparse categorical cross-entropy on logits.
    metrics_fn: A no-argument function returning a list of Keras metrics;
      None: `accuracy`.
    preprocess_fn: Maps one raw example to `OrderedDict(x=..., y=...)` (or an
      `(x, y)` pair), before batching; with a `seed` keyword argument it is
      called, in training, with a per-example stateless seed for augmentation
      (`fedtff.data.ClientPreprocessing.build`). None: examples already are
      `(x, y)`.
  """
  model_fn: Callable[[], tf.keras.Model]
  train_data: ClientData
  test_data: ClientData
  loss_fn: Optional[Callable[[], Any]] = None
  metrics_fn: Optional[Callable[[], List[Any]]] = None
  preprocess_fn: Optional[Callable[..., Any]] = None


class Resolved(NamedTuple):
  """What `resolve` returns.

  Attributes:
    config: The config with every import path (or, for Python objects, where
      they were defined) recorded.
    task: The user's task, or None for the config's built-in task. Its
      `train_data` is None when only the model, loss or metrics are the user's.
    process: The user's algorithm, or None for `config.algorithm`.
  """
  config: ml_collections.ConfigDict
  task: Optional[UserTask]
  process: Optional[ProcessLike]


def _get(config, key: str) -> Any:
  group, _, field = key.partition('.')
  return config[group][field]


def _set(config, key: str, value: Any) -> None:
  group, _, field = key.partition('.')
  config[group][field] = value


def describe(obj: Any) -> str:
  """Where `obj` was defined, 'module:qualname' (a partial: its function's)."""
  if isinstance(obj, functools.partial):
    return describe(obj.func)
  module, name = getattr(obj, '__module__', None), getattr(obj, '__qualname__', None)
  if module and name:
    return f'{module}:{name}'
  return f'<{type(obj).__name__} object>'


def _describe_data(train: ClientData, test: ClientData) -> str:
  return (f'<in-memory ClientData: {len(train.client_ids)} training, '
          f'{len(test.client_ids)} held-out clients>')


def _cannot_import(key: str, path: str, why: str) -> config_lib.ConfigError:
  return config_lib.ConfigError(f'Config key {key} names {path!r}, which cannot be imported: '
                                f'{why}.')


def import_object(key: str, path: str) -> Any:
  """The object an import path 'package.module:name' (name may be dotted) names.

  Modules are looked up on `sys.path` and in the current directory.

  Raises:
    fedtff.runner.config.ConfigError: If `path` is not such a path or cannot be
      imported (naming `key` and `path`).
  """
  if path.startswith('<'):
    raise config_lib.ConfigError(
        f'Config key {key} is {path!r}, an object the run was given in Python; give it again '
        '(run_experiment or evaluate_checkpoint with task= or process=).')
  module_name, sep, attr = path.partition(':')
  if not sep or not module_name or not attr:
    raise config_lib.ConfigError(
        f"Config key {key} must be an import path 'module:name' such as "
        f"'my_lab.models:resnet_gn', got {path!r}.")
  if os.getcwd() not in sys.path and '' not in sys.path:
    sys.path.append(os.getcwd())
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise _cannot_import(key, path, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except  # The user's module raised.
    raise _cannot_import(key, path, f'importing {module_name} raised {type(e).__name__}: '
                         f'{str(e).strip().splitlines()[0] if str(e).strip() else ""}') from None
  for part in attr.split('.'):
    if not hasattr(obj, part):
      raise _cannot_import(key, path, f'{module_name} has no attribute {attr!r}')
    obj = getattr(obj, part)
  return obj


def _wrong_kind(where: str, got: str, key: str) -> TypeError:
  return TypeError(f'{where} {got}; expected {_EXPECTED[key]}.')


def _kind(value: Any) -> str:
  name = type(value).__name__
  return f'{"an" if name[0].lower() in "aeiou" else "a"} {name}'


def _check_callable(where: str, key: str, obj: Any) -> None:
  if not callable(obj) or isinstance(obj, tf.keras.Model):
    raise _wrong_kind(where, f'is {_kind(obj)}', key)


def _call(where: str, fn: Callable[[], Any]) -> Any:
  """`fn()`, with what it raises as a TypeError naming `where`."""
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except  # The user's code raised.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise TypeError(f'{where} raised {type(e).__name__}: {first.rstrip(".")}.') from None


def _check_model(where: str, model_fn: Any) -> None:
  _check_callable(where, 'model.factory', model_fn)
  with tf.Graph().as_default():
    model = _call(where, model_fn)
  if not isinstance(model, tf.keras.Model):
    raise _wrong_kind(where, f'returned {_kind(model)}', 'model.factory')


def _check_loss(where: str, loss_fn: Any) -> None:
  _check_callable(where, 'model.loss', loss_fn)
  loss = _call(where, loss_fn)
  if not isinstance(loss, tf.keras.losses.Loss):
    raise _wrong_kind(where, f'returned {_kind(loss)}', 'model.loss')


def _check_metrics(where: str, metrics_fn: Any) -> None:
  _check_callable(where, 'model.metrics', metrics_fn)
  with tf.Graph().as_default():
    metrics = _call(where, metrics_fn)
  if not isinstance(metrics, (list, tuple)) or not all(
      isinstance(m, tf.keras.metrics.Metric) for m in metrics):
    raise _wrong_kind(where, f'returned {_kind(metrics)}', 'model.metrics')
  for metric in metrics:
    _check_rebuildable(where, metric)


def metric_names(metrics_fn: Callable[[], List[Any]]) -> List[str]:
  """The names of the metrics `metrics_fn` returns, their `eval/<name>` columns."""
  with tf.Graph().as_default():
    return [metric.name for metric in metrics_fn()]


def _init_arguments(cls: type) -> List[str]:
  """The named arguments of `cls.__init__` (not `self`, `*args`, `**kwargs`)."""
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
  return [p.name for p in parameters if p.kind in named]


def _check_rebuildable(where: str, metric: tf.keras.metrics.Metric) -> None:
  """Refuses a metric that `cls.from_config(get_config())` would not rebuild as it is.

  Both engines give every model fresh metrics rebuilt from the Keras config
  (`fedtff.algorithms.tff_model`, as TFF's `keras_finalizer` does), so an
  `__init__` argument that `get_config()` leaves out would silently take its
  default. TFF's own check (`_check_keras_metric_config_constructable`) is the
  same, and likewise trusts Keras's own metric classes.
  """
  cls = type(metric)
  if getattr(tf.keras.metrics, cls.__name__, None) is cls:
    return
  config = metric.get_config()
  missing = [name for name in _init_arguments(cls) if name not in config]
  if missing:
    raise TypeError(
        f"{where} returned a {cls.__name__} metric whose get_config() lacks its __init__ "
        f"argument{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; both "
        'engines rebuild each metric from get_config(), as TFF does, so return '
        f"{'them' if len(missing) > 1 else 'it'} from get_config().")


def _check_data(where: str, pair: Any) -> Tuple[ClientData, ClientData]:
  if not (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(d, ClientData) for d in pair)):
    raise _wrong_kind(where, f'returned {_kind(pair)}', 'data.source')
  return tuple(pair)


def _check_process(where: str, process: Any) -> None:
  if not isinstance(process, LearningProcess) and not callable(process):
    raise _wrong_kind(where, f'is {_kind(process)}', PROCESS_KEY)


_CHECKS = {'model.factory': _check_model, 'model.loss': _check_loss,
           'model.metrics': _check_metrics,
           'data.preprocess': lambda where, obj: _check_callable(where, 'data.preprocess', obj),
           PROCESS_KEY: _check_process}


def _check(key: str, where: str, obj: Any) -> None:
  _CHECKS[key](where, obj)


def _from_config(config, skip=()) -> Dict[str, Any]:
  """The objects the config's import paths name (but the keys in `skip`), checked."""
  objects = {}
  for key in KEYS:
    path = _get(config, key)
    if not path or key in skip:
      continue
    obj = import_object(key, path)
    where = f'Config key {key} names {path!r}, which'
    try:
      if key == 'data.source':
        _check_callable(where, key, obj)
        obj = _check_data(where, _call(where, obj))
      else:
        _check(key, where, obj)
    except TypeError as e:
      raise config_lib.ConfigError(str(e)) from None
    objects[key] = obj
  return objects


def _from_python(task: Optional[UserTask], process: Optional[ProcessLike]) -> Dict[str, Any]:
  """The objects of `task` and `process`, checked (TypeError naming the field)."""
  objects = {}
  if task is not None:
    if not isinstance(task, UserTask):
      raise TypeError(f'run_experiment(task=...) takes a fedtff.UserTask, got {_kind(task)}.')
    for key, field in TASK_KEYS.items():
      if key == 'data.source':
        objects[key] = _check_data('UserTask (train_data, test_data)', (
            task.train_data, task.test_data))
        continue
      value = getattr(task, field)
      if value is not None:
        _check(key, f'UserTask.{field} ({describe(value)})', value)
        objects[key] = value
  if process is not None:
    _check_process(f'run_experiment(process=...) ({describe(process)})', process)
    objects[PROCESS_KEY] = process
  return objects


def _recorded(key: str, obj: Any) -> str:
  if key == 'data.source':
    return _describe_data(*obj)
  if isinstance(obj, LearningProcess):
    return '<LearningProcess object>'
  return describe(obj)


def _check_combination(config, objects: Dict[str, Any]) -> None:
  if 'data.source' in objects and 'model.factory' not in objects:
    raise config_lib.ConfigError(
        'Config key data.source needs model.factory: the built-in models (model.name) are '
        "sized for the built-in datasets; name your model, e.g. 'my_lab.models:resnet_gn'.")
  if 'data.preprocess' in objects and 'data.source' not in objects:
    raise config_lib.ConfigError(
        'Config key data.preprocess needs data.source: the built-in datasets bring their own '
        'preprocessing.')
  config_lib.check_engine(config)  # The process given in Python is recorded now.
  if PROCESS_KEY in objects:
    if config.aggregator.kind == 'dp':
      raise config_lib.ConfigError(
          "aggregator.kind='dp' needs fedtff's own process, whose DP aggregator the privacy "
          "accounting describes; a user's learning process (algorithm.process) brings its own "
          'aggregator, which fedtff cannot account for.')


def resolve(config: ml_collections.ConfigDict, *, task: Optional[UserTask] = None,
            process: Optional[ProcessLike] = None) -> Resolved:
  """Imports the config's import paths and merges `task` and `process` into it.

  Args:
    config: A validated experiment config.
    task: A task given in Python; its objects' definitions ('module:qualname')
      are recorded in the config's import-path keys.
    process: A user's algorithm given in Python (see `ProcessLike`).

  Returns:
    `Resolved`: the config recording every path, and the objects.

  Raises:
    fedtff.runner.config.ConfigError: If a path cannot be imported or names an object
      of the wrong kind (one line naming the key and the path), a key is set
      both in the config and in Python to different objects, or the
      combination is not supported.
    TypeError: If an object given in Python is of the wrong kind.
  """
  given = _from_python(task, process)
  objects = _from_config(config, skip=given)
  config = config.copy_and_resolve_references()
  for key, obj in given.items():
    recorded = _recorded(key, obj)
    if _get(config, key) and _get(config, key) != recorded:
      raise config_lib.ConfigError(
          f'Config key {key} is {_get(config, key)!r} but run_experiment was also given '
          f'{recorded!r}; name it in one place.')
    objects[key] = obj
    _set(config, key, recorded)
  _check_combination(config, objects)
  user_task = None
  if any(key in objects for key in TASK_KEYS):
    train, test = objects.get('data.source', (None, None))
    user_task = UserTask(model_fn=objects.get('model.factory'), train_data=train,
                         test_data=test, loss_fn=objects.get('model.loss'),
                         metrics_fn=objects.get('model.metrics'),
                         preprocess_fn=objects.get('data.preprocess'))
  return Resolved(config, user_task, objects.get(PROCESS_KEY))


def build_task(config: ml_collections.ConfigDict, user: Optional[UserTask]) -> tasks.Task:
  """The runner's task: `tasks.build_task(config)` with the user's parts in place.

  The user's training clients are batched per round as `config.data` says and
  seeded by `(seed, round, client)` (`fedtff.data.RoundClientData`), exactly
  as the built-in array datasets are.
  """
  if user is None:
    return tasks.build_task(config)
  if user.train_data is None:  # The user's model, loss or metrics on a built-in dataset.
    task = tasks.build_task(config)
    model_fn = user.model_fn
    if model_fn is not None and config.data.weight_decay:
      model_fn = tasks._with_l2(model_fn, config.data.weight_decay)  # pylint: disable=protected-access
    return dataclasses.replace(task, model_fn=model_fn or task.model_fn,
                               loss_fn=user.loss_fn or task.loss_fn,
                               metrics_fn=user.metrics_fn or task.metrics_fn)
  train_fn = tasks._preprocessing(config.data).build(user.preprocess_fn)  # pylint: disable=protected-access
  eval_fn = data.ClientPreprocessing(batch_size=config.data.eval_batch_size or 100).build(
      user.preprocess_fn)
  model_fn = user.model_fn
  if config.data.weight_decay:
    model_fn = tasks._with_l2(model_fn, config.data.weight_decay)  # pylint: disable=protected-access
  try:  # Builds the first client's dataset: the preprocessing runs here first.
    train_data = data.RoundClientData(user.train_data, train_fn, seed=config.seed)
  except Exception as e:  # pylint: disable=broad-except  # The user's data or preprocessing.
    # A traced function's error ends with its cause (after TF's "in user code:" trace).
    last = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
    raise ValueError(f'The training clients (data.source {config.data.source!r}, data.preprocess '
                     f'{config.data.preprocess!r}) cannot be iterated: {last}') from None
  return tasks.Task(
      train_data=train_data,
      test_data=user.test_data.preprocess(eval_fn), model_fn=model_fn, num_classes=0,
      loss_fn=user.loss_fn, metrics_fn=user.metrics_fn)


def build_process(process: ProcessLike, task: tasks.Task) -> LearningProcess:
  """The user's LearningProcess: `process` itself, or `process(model_fn)` with
  TFF's model function of the task (`fedtff.algorithms.tff_model.tff_model_fn`).

  Raises:
    TypeError: If a builder returns something else than a LearningProcess.
  """
  if isinstance(process, LearningProcess):
    return process
  built = process(tff_model.tff_model_fn(task.model_fn, task.element_spec,
                                         **task.learning_kwargs()))
  if not isinstance(built, LearningProcess):
    raise TypeError(f'The process builder {describe(process)} returned {_kind(built)}; expected '
                    'a tff.learning.templates.LearningProcess.')
  return built
