"""Hides TensorFlow's C++ log banners and Python warnings in fedtff scripts.

It also installs experiments/stopping.py's SIGINT and SIGTERM handlers, so a
signal stops the script with one line even while TensorFlow is imported.

Import this before TensorFlow loads: TensorFlow reads `TF_CPP_MIN_LOG_LEVEL`
once, at import. Set `FEDTFF_VERBOSE=1`, or pass `--verbosity=0` (absl's INFO
level) or higher, to see everything again.
"""

import logging
import os
import sys
import warnings

from experiments import stopping

stopping.install()


def verbose_requested(argv, environ=os.environ) -> bool:
  """Whether `FEDTFF_VERBOSE=1` or `--verbosity=N` with N >= 0 was given."""
  if environ.get('FEDTFF_VERBOSE', '0') not in ('', '0'):
    return True
  for arg in argv:
    name, _, value = arg.partition('=')
    if name in ('--verbosity', '-v') and value.lstrip('-').isdigit():
      return int(value) >= 0
  return False


VERBOSE = verbose_requested(sys.argv)
if not VERBOSE:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  warnings.filterwarnings('ignore')
  logging.getLogger('tensorflow').setLevel(logging.ERROR)
