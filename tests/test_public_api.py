"""The public surface that `import fedtff` offers."""

import fedtff


def test_exports_the_documented_api():
  expected = {
      'build_evaluation', 'build_fed_avg', 'config', 'data', 'fast', 'local_runtime', 'models',
      'optimizer', 'run_experiment', 'run_training', 'runtime', 'sample_clients', 'batch_fn',
      'privacy', 'build_learning_process', 'build_fed_prox', 'build_fed_sgd', 'build_mime_lite',
      'AggregatorSpec', 'Schedule', 'evaluate_checkpoint', 'sweeps', 'optimizer_fn', 'ALGORITHMS', 'TrainingDivergedError',
      'client_metrics', 'build_per_client_evaluation',
  }
  exported = {name for name in dir(fedtff) if not name.startswith('_')}
  assert expected <= exported
  assert fedtff.__version__ == '0.1.0'
