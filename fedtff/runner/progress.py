"""The runner's progress line: one printed line per round.

`ProgressLine(total_rounds)` is a metrics writer (`fedtff.run_training`'s
`metrics_writers`, `fedtff.run_experiment`'s `progress_fn`): called with each
round's row it prints the round, training loss and accuracy, held-out
accuracy, epsilon of a DP run, seconds per round (mean of the last 10) and the
time left, e.g.

  round 3/10  loss 0.6931  accuracy 0.5000  test accuracy 0.5500  0.41 s/round  ETA 3 s
"""

import sys


class ProgressLine:
  """Prints one line per round: round, loss, accuracy, seconds per round, ETA."""

  def __init__(self, total_rounds: int, stream=sys.stdout):
    self._total_rounds = total_rounds
    self._stream = stream
    self._round_times = []

  def __call__(self, row) -> None:
    line = f"round {row['round']:>{len(str(self._total_rounds))}}/{self._total_rounds}"
    if 'train/loss' in row:  # A DP run withholds the client-derived columns by default.
      line += (f"  loss {row['train/loss']:.4f}"
               f"  accuracy {row.get('train/accuracy', float('nan')):.4f}")
    if 'eval/accuracy' in row:
      line += f"  test accuracy {row['eval/accuracy']:.4f}"
    if 'privacy/epsilon' in row:
      line += f"  epsilon {row['privacy/epsilon']:.3f}"
    if 'round_time_s' in row:
      self._round_times.append(row['round_time_s'])
      recent = self._round_times[-10:]
      seconds_per_round = sum(recent) / len(recent)
      eta_s = seconds_per_round * (self._total_rounds - row['round'])
      line += f'  {seconds_per_round:.2f} s/round  ETA {eta_s:.0f} s'
    print(line, file=self._stream, flush=True)
