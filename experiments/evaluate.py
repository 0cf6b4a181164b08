"""Evaluates the newest checkpoint of a run directory on all its test clients.

  python experiments/evaluate.py --workdir=runs/quickstart
  python experiments/evaluate.py --workdir=runs/quickstart --output=eval.json

Rebuilds the run from RUN_DIR/config.json, restores the newest checkpoint in
RUN_DIR/checkpoints and prints its round and eval/<name> metrics, or writes
them as one JSON object to --output.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

from absl import flags

from experiments import cli
from fedtff.runner import checkpoint_eval
from fedtff.runner import outputs

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory whose newest checkpoint to evaluate.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the metrics as JSON to this file instead.')


def main(argv):
  cli.reject_extra_args(argv)
  metrics = checkpoint_eval.evaluate_checkpoint(_WORKDIR.value)
  if _OUTPUT.value:
    outputs.write_json(_OUTPUT.value, metrics)
    print(f"wrote the metrics of checkpoint round {metrics['round']} to {_OUTPUT.value}",
          flush=True)
    return
  print(f"checkpoint round {metrics['round']} of {_WORKDIR.value}")
  width = max(len(name) for name in metrics)
  for name, value in metrics.items():
    if name != 'round':
      print(f'{name:<{width}}  {value:.6g}', flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  cli.run(main, verbose=quiet_tf.VERBOSE)
