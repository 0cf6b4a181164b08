"""Shared fixtures: tiny offline clients, and running fedtff scripts."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before TensorFlow loads: no C++ banners.

# pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_classification_arrays(num_examples=90, num_features=8, seed=0):
  """Linearly separable 3-class data: features float32, labels int32."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(num_examples, num_features)).astype(np.float32)
  labels = np.argmax(features[:, :3], axis=1).astype(np.int32)
  return features, labels


@pytest.fixture(scope='session')
def tiny_arrays():
  return tiny_classification_arrays()


def script_env(**extra):
  env = dict(os.environ)
  env.pop('FEDTFF_VERBOSE', None)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # Set above for this process; scripts choose their own.
  env.update(extra)
  return env


def run_script(args, *, timeout=300, **popen_kwargs):
  """Runs `python args...` from the repo root; returns CompletedProcess."""
  return subprocess.run([sys.executable] + list(args), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout, env=script_env(), **popen_kwargs)
