"""What every fedtff script shares: one-line errors, signals, progress lines."""

import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import stopping
from fedtff.runner import config as config_lib
from fedtff.execution import distributed
from fedtff.execution import secagg
from fedtff.runner import progress
from fedtff.runner import training

# Errors a user can fix or must know of: shown as one line, no traceback. A
# WorkerError names the worker (and, from run_experiment, the checkpoint kept); a
# SecAggError the site that refused secure aggregation (e.g. a peer's certificate).
USER_ERRORS = (config_lib.ConfigError, OSError, ValueError, TypeError, KeyError,
               training.TrainingDivergedError, distributed.WorkerError, secagg.SecAggError)


def reject_extra_args(argv) -> None:
  """Refuses positional arguments: every input of these scripts is a --flag."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected argument {argv[1]!r}: every input is a --flag, '
                         f'see --help.')


def _one_line_errors(main, program: str, verbose: bool):

  def wrapped(argv):
    try:
      main(argv)
    except USER_ERRORS + (app.UsageError,) as e:
      if verbose:
        raise
      message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      print(f'{program}: error: {message}', file=sys.stderr, flush=True)
      sys.exit(2)

  return wrapped


def _missing_config_file(argv):
  for arg in argv[1:]:
    name, _, value = arg.partition('=')
    path = value.partition(':')[0]
    if name == '--config' and not os.path.isfile(path):
      return f'config file {path} does not exist (expected configs/NAME.py[:VARIANT])'
  return None


def _config_file_error(error: Exception):
  """The cause of a `get_config()` that raised, which ml_collections buries in a traceback.

  Returns None if `error` is not such an error.
  """
  lines = [line for line in str(error).strip().splitlines() if line.strip()]
  if not lines or not lines[0].startswith('flag --config=') or len(lines) < 2:
    return None
  spec = lines[0][len('flag --config='):].partition(': Error whilst parsing')[0]
  path, _, variant = spec.partition(':')
  cause = lines[-1].partition(': ')[2] or lines[-1]
  if variant and 'get_config() takes 0 positional arguments' in cause:
    return f'config file {path} has no variants, got {spec}; use --config={path}'
  return f'config file {spec}: {cause}'


def _flag_error(argv, error: Exception) -> str:
  """One sentence for a command line that absl or ml_collections rejected."""
  config_file_error = _config_file_error(error)
  if config_file_error:
    return config_file_error
  message = str(error).strip().splitlines()[0]
  for arg in argv[1:]:
    name, _, value = arg.partition('=')
    if name.startswith('--config.'):
      key = name[len('--config.'):]
      try:
        config_lib.check_key(key)
      except config_lib.ConfigError as e:
        return str(e)
      if message.startswith(f'flag {arg}:'):
        return f'Config key {key} must be {config_lib.describe_type(key)}, got {value!r}.'
  return message


def _split_none_overrides(argv):
  """Takes `--config.KEY=None` out of `argv` for keys whose schema default is None.

  ml_collections parses such a field (a float `FieldReference`) as a float
  only, so `None`, the default that means "adaptive" or "unset", could not be
  given back. Returns `(argv without them, keys to set to None)`; the last
  override of a key wins.
  """
  defaults = config_lib.schema_defaults()
  kept, none_keys = [], {}
  for arg in argv:
    name, has_value, value = arg.partition('=')
    if name.startswith('--config.'):
      key = name[len('--config.'):]
      none_keys.pop(key, None)
      if has_value and value.strip().lower() == 'none' and key in defaults and defaults[key] is None:
        none_keys[key] = True
        continue
    kept.append(arg)
  return kept, list(none_keys)


def _set_none(config, key: str) -> None:
  *groups, field = key.split('.')
  for group in groups:
    config = config[group]
  config[field] = None


def _parse_flags(program: str):

  def fail(message: str):
    print(f'{program}: error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)

  def parse(argv):
    missing = _missing_config_file(argv)
    if missing:
      fail(missing)
    parsed_argv, none_keys = _split_none_overrides(argv)
    try:
      remaining = flags.FLAGS(parsed_argv)
      for key in none_keys:
        _set_none(flags.FLAGS['config'].value, key)
    except Exception as e:  # pylint: disable=broad-except  # absl and ml_collections raise many types.
      fail(_flag_error(argv, e))
    return remaining

  return parse


def run(main, *, verbose: bool) -> None:
  """`absl.app.run(main)`, with signals handled and user errors on one line.

  SIGINT and SIGTERM unwind `main` (stopping its workers), print one line and
  exit with 130 or 143 (experiments/stopping.py, installed by quiet_tf). The
  process ends without the interpreter's slow finalization, so a signal is
  answered until the very end.
  """
  program = sys.argv[0].rpartition('/')[2]

  def main_with_log_level(argv):
    if not verbose:
      logging.set_verbosity(logging.WARNING)
    main(argv)

  try:
    with stopping.protected():
      app.run(_one_line_errors(main_with_log_level, program, verbose),
              flags_parser=_parse_flags(program))
  except KeyboardInterrupt as e:
    signum = e.signum if isinstance(e, stopping.Stopped) else signal.SIGINT
    stopping.exit_after_unwinding(signum)
  except SystemExit as e:  # app.run always ends so.
    stopping.exit_now(e.code)


# The progress line, one per round; fedtff.ProgressLine, so research code prints the same.
RoundPrinter = progress.ProgressLine
