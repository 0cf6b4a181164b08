"""A site's own client data: its directory format, manifest, export, and reader.

A site (docs/cross_silo.md, "Sites and routing") keeps its clients' examples in
a directory DIR that never leaves its machine:

  DIR/manifest.json   what the site announces (`read_manifest`)
  DIR/clients.sqlite  the examples, in TFF's SQL client data format

`clients.sqlite` is the format TFF hosts its federated datasets in and that
`fedtff.data.write_sql_client_data` writes: a table `examples (split_name,
client_id, serialized_example_proto)` of serialized `tf.train.Example`s, split
'train' for the training clients and 'test' for the held-out ones. Each
feature of an example is one tensor of the element, named by its path in the
element ('x', 'y', or 'x/pixels' for a dict of features).

`manifest.json` holds {"format": "fedtff-site/1", "site": name,
"train_client_ids": [...], "test_client_ids": [...], "element_spec": {name:
{"dtype", "shape"}} in element order, "counts": {"train": {id: examples},
"test": {...}}, "num_classes": labels' classes}. The element spec is what TFF
needs to type the computations the trainer builds; the counts let the trainer
tell an empty round from a diverged one.

The trainer's computations read a client's examples inside TFF's runtime,
from the RELATIVE path `data/clients.sqlite` (`dataset_fn`): the site's
worker runs with its working directory holding `data -> DIR`, so one
computation serves every site, and the trainer never handles an example.

  python -m fedtff.execution.site_data export --config=configs/quickstart.py \\
      --out=OUT --sites alice bob carol

writes `OUT/alice`, `OUT/bob`, `OUT/carol` from the config's client data
(`export_sites`): the sorted ids of all clients (training and held-out) are
cut into contiguous blocks, one per site in the order named, the first blocks
one client longer when the division is not exact.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff import data
from fedtff import tasks
from fedtff.data import sql_files

FORMAT = 'fedtff-site/1'
MANIFEST = 'manifest.json'
EXAMPLES = 'clients.sqlite'
DATA_LINK = 'data'  # The site's DIR, as the computations name it (relative to the worker's cwd).
SPLITS = ('train', 'test')
_SEPARATOR = '/'  # Between the parts of a feature's path in the element.
_DTYPES = ('float16', 'float32', 'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
           'string')
_KEYS = ('format', 'site', 'train_client_ids', 'test_client_ids', 'element_spec', 'counts',
         'num_classes')
ClientData = tff.simulation.datasets.ClientData


def describe_element_spec(element_spec: Any) -> Dict[str, Dict[str, Any]]:
  """The JSON description of a client dataset's element spec (module docstring).

  Raises:
    ValueError: If the element is not a mapping of tensors (or of mappings of
      tensors) of a dtype a `tf.train.Example` holds exactly.
  """
  description = collections.OrderedDict()
  for path, spec in _flat(element_spec, ()):
    dtype = spec.dtype.name
    if dtype not in _DTYPES or spec.shape.rank is None or None in spec.shape.as_list():
      raise ValueError(f'Element {_SEPARATOR.join(path)} is {spec}; a site stores tensors of '
                       f'fixed shape and one of the dtypes {", ".join(_DTYPES)}.')
    description[_SEPARATOR.join(path)] = dict(dtype=dtype, shape=spec.shape.as_list())
  return description


def _flat(structure: Any, path: Tuple[str, ...]):
  if isinstance(structure, tf.TensorSpec):
    yield path, structure
    return
  if not isinstance(structure, Mapping) or not structure:
    raise ValueError(f'A site stores elements that are mappings of tensors; got {structure!r} '
                     f'at {_SEPARATOR.join(path) or "the top"}.')
  for name, value in structure.items():
    if not isinstance(name, str) or not name or _SEPARATOR in name:
      raise ValueError(f'Element names must be non-empty strings without {_SEPARATOR!r}, '
                       f'got {name!r}.')
    yield from _flat(value, path + (name,))


def element_spec(description: Mapping[str, Mapping[str, Any]]) -> Any:
  """The element spec (nested OrderedDicts of `tf.TensorSpec`) of a description."""
  spec = collections.OrderedDict()
  for name, tensor in description.items():
    *parents, leaf = name.split(_SEPARATOR)
    node = spec
    for parent in parents:
      node = node.setdefault(parent, collections.OrderedDict())
    node[leaf] = tf.TensorSpec(tensor['shape'], tf.dtypes.as_dtype(tensor['dtype']))
  return spec


class SiteDataError(ValueError):
  """A site data directory (or its manifest) that does not fit the format."""


def _fail(directory: str, reason: str) -> SiteDataError:
  return SiteDataError(f'{directory} is not a fedtff site data directory: {reason}.')


def check_manifest(manifest: Any, source: str) -> Dict[str, Any]:
  """`manifest` if it is a site manifest; `source` names it in the error.

  Raises:
    SiteDataError: One line naming the first missing or malformed field.
  """
  if not isinstance(manifest, dict):
    raise _fail(source, f'{MANIFEST} holds {type(manifest).__name__}, not a JSON object')
  missing = [key for key in _KEYS if key not in manifest]
  if missing:
    raise _fail(source, f'{MANIFEST} lacks {", ".join(missing)}')
  if manifest['format'] != FORMAT:
    raise _fail(source, f'format is {manifest["format"]!r}, expected {FORMAT!r}')
  for split in SPLITS:
    ids = manifest[f'{split}_client_ids']
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(
        set(ids)) != len(ids):
      raise _fail(source, f'{split}_client_ids must be a list of distinct strings')
    counts = manifest['counts'].get(split) if isinstance(manifest['counts'], dict) else None
    if not isinstance(counts, dict) or sorted(counts) != sorted(ids):
      raise _fail(source, f'counts.{split} must give the examples of each {split} client')
  try:
    element_spec(manifest['element_spec'])
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise _fail(source, f'element_spec is not a description of tensors ({e})') from None
  return manifest


def read_manifest(directory: str) -> Dict[str, Any]:
  """The manifest of the site data directory `directory` (module docstring).

  Raises:
    SiteDataError: One line naming `directory` and what is wrong with it.
  """
  if not os.path.isdir(directory):
    raise _fail(directory, 'no such directory')
  for name in (MANIFEST, EXAMPLES):
    if not os.path.isfile(os.path.join(directory, name)):
      raise _fail(directory, f'it has no {name}')
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise _fail(directory, f'{MANIFEST} cannot be read as JSON ({e})') from None
  return check_manifest(manifest, directory)


def dataset_fn(description: Mapping[str, Mapping[str, Any]], split: str):
  """`client_id -> tf.data.Dataset` of a site client's examples of `split`.

  The dataset reads `data/clients.sqlite`, relative to the working directory
  of the process that iterates it (a site's worker), with TFF's
  `tf.data.experimental.SqlDataset` query, in the order the examples were
  written, and parses each `tf.train.Example` back into the element
  `description` gives. Serializable: TFF traces it into its computations.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  features = {name: tf.io.FixedLenFeature(tensor['shape'], _parsed_dtype(tensor['dtype']))
              for name, tensor in description.items()}
  structure = element_spec(description)

  def parse(serialized):
    parsed = tf.io.parse_single_example(serialized, features)
    flat = [tf.cast(parsed[name], tf.dtypes.as_dtype(tensor['dtype']))
            for name, tensor in description.items()]
    return tf.nest.pack_sequence_as(structure, flat)

  def client_dataset(client_id) -> tf.data.Dataset:
    quoted = tf.strings.regex_replace(client_id, "'", "''")  # An SQL string literal.
    query = tf.strings.join([
        "SELECT serialized_example_proto FROM examples WHERE client_id = '", quoted,
        f"' AND split_name = '{split}' ORDER BY rowid"])
    examples = tf.data.experimental.SqlDataset(
        'sqlite', f'{DATA_LINK}/{EXAMPLES}', query, (tf.string,))
    return examples.map(parse)

  return client_dataset


def _parsed_dtype(dtype: str) -> tf.dtypes.DType:
  """The dtype a `tf.train.Example` feature holds for a tensor of `dtype`."""
  if dtype == 'string':
    return tf.string
  return tf.float32 if dtype.startswith('float') else tf.int64


def merge_manifests(manifests: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
  """The federation that the sites' manifests describe, checked.

  Returns:
    {'train_client_ids': sorted union, 'test_client_ids': sorted union,
     'element_spec': the shared description, 'num_classes': the largest,
     'counts': {split: {id: examples}}, 'site_of': {id: site}}.

  Raises:
    SiteDataError: If a manifest names another site, the element specs
      differ, or a client id is held by two sites.
  """
  if not manifests:
    raise SiteDataError('No sites: name at least one in runtime.sites.')
  merged = dict(counts={split: {} for split in SPLITS}, site_of={})
  for site, manifest in manifests.items():
    if manifest['site'] != site:
      raise SiteDataError(f'Site {site!r} announces the data of site {manifest["site"]!r}.')
    if manifest['element_spec'] != merged.setdefault('element_spec', manifest['element_spec']):
      raise SiteDataError(f'Site {site!r} announces element spec {manifest["element_spec"]}, '
                          f'other sites {merged["element_spec"]}.')
    for split in SPLITS:
      for client_id in manifest[f'{split}_client_ids']:
        other = merged['site_of'].setdefault(client_id, site)
        if other != site:
          raise SiteDataError(f'Client {client_id!r} is held by two sites, {other!r} and '
                              f'{site!r}.')
        merged['counts'][split][client_id] = int(manifest['counts'][split][client_id])
  for split in SPLITS:
    merged[f'{split}_client_ids'] = sorted(merged['counts'][split])
  merged['num_classes'] = max(int(m['num_classes']) for m in manifests.values())
  return merged


def site_task(config: ml_collections.ConfigDict, federation: Mapping[str, Any]) -> tasks.Task:
  """The config's task over the sites' clients: its preprocessing and model, no data.

  The raw client datasets read the sites' files (`dataset_fn`); the rest is
  `fedtff.tasks.array_task`, as for the local run of the same config.

  Raises:
    ValueError: If the config's dataset is not one a site holds (an array
      dataset: digits, synthetic, npz_dir), or a split has no clients.
  """
  _check_array_dataset(config)
  description = federation['element_spec']
  splits = []
  for split in SPLITS:
    ids = federation[f'{split}_client_ids']
    if not ids:
      raise ValueError(f'The sites hold no {split} clients.')
    splits.append(ClientData.from_clients_and_tf_fn(ids, dataset_fn(description, split)))
  x = element_spec(description).get('x')
  input_shape = x.shape.as_list() if isinstance(x, tf.TensorSpec) else None
  return tasks.array_task(config, *splits, input_shape=input_shape,
                          num_classes=config.data.num_classes or federation['num_classes'])


def _check_array_dataset(config: ml_collections.ConfigDict) -> None:
  if config.data.dataset in tasks.HOSTED_DATASETS or config.data.source:
    raise ValueError('Sites hold the clients of an array dataset (digits, synthetic_fedprox, '
                     f'synthetic_iid, npz_dir); got data.dataset={config.data.dataset!r}'
                     f'{" with data.source" if config.data.source else ""}.')


def site_blocks(client_ids: Sequence[str], sites: Sequence[str]) -> Dict[str, List[str]]:
  """The sorted `client_ids` cut into contiguous blocks, one per site in order.

  The first `len(client_ids) % len(sites)` sites get one client more.

  Raises:
    ValueError: If the site names are not distinct, non-empty names of
      letters, digits, '-' and '_', or there are fewer clients than sites.
  """
  for site in sites:
    if not site or not all(c.isalnum() or c in '-_' for c in site):
      raise ValueError(f"A site name is letters, digits, '-' and '_', got {site!r}.")
  if len(set(sites)) != len(sites) or not sites:
    raise ValueError(f'Name each site once, at least one; got {list(sites)}.')
  ids = sorted(set(client_ids))
  if len(ids) < len(sites):
    raise ValueError(f'{len(ids)} clients cannot fill {len(sites)} sites.')
  size, extra = divmod(len(ids), len(sites))
  blocks, start = {}, 0
  for k, site in enumerate(sites):
    stop = start + size + (k < extra)
    blocks[site] = ids[start:stop]
    start = stop
  return blocks


def _rows(client_data: ClientData, client_ids: Sequence[str], split: str):
  names = list(describe_element_spec(client_data.element_type_structure))
  for client_id in client_ids:
    for element in client_data.create_tf_dataset_for_client(client_id):
      flat = tf.nest.flatten(element)
      yield split, client_id, {name: value.numpy() for name, value in zip(names, flat)}


def write_site(directory: str, site: str, train: ClientData, test: ClientData,
               client_ids: Sequence[str], *, num_classes: int) -> Dict[str, Any]:
  """Writes the site data directory of `site`'s clients `client_ids`; returns its manifest.

  Args:
    directory: The new directory (its parent must exist; it must not).
    site: The site's name.
    train: The raw training clients (e.g. `from_arrays`'s, unpreprocessed).
    test: The raw held-out clients.
    client_ids: The site's clients; each goes to the splits that hold it.
    num_classes: The number of label classes the federation has.
  """
  description = describe_element_spec(train.element_type_structure)
  if describe_element_spec(test.element_type_structure) != description:
    raise ValueError('The training and test clients have different element specs.')
  ids = {'train': [c for c in client_ids if c in set(train.client_ids)],
         'test': [c for c in client_ids if c in set(test.client_ids)]}
  os.mkdir(directory)
  sql_files.write_sql_client_data(
      os.path.join(directory, EXAMPLES),
      [row for split, cd in zip(SPLITS, (train, test)) for row in _rows(cd, ids[split], split)])
  counts = {split: {c: int(cd.create_tf_dataset_for_client(c).reduce(0, lambda n, _: n + 1))
                    for c in ids[split]} for split, cd in zip(SPLITS, (train, test))}
  manifest = dict(format=FORMAT, site=site, train_client_ids=ids['train'],
                  test_client_ids=ids['test'], element_spec=description, counts=counts,
                  num_classes=int(num_classes))
  with open(os.path.join(directory, MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest


def raw_client_data(config: ml_collections.ConfigDict) -> Tuple[ClientData, ClientData, int]:
  """The config's raw (unpreprocessed) training and test clients, and its number of classes."""
  _check_array_dataset(config)
  train, evaluation = tasks.arrays(config.data, config.seed)
  num_classes = config.data.num_classes or int(np.max(train.labels)) + 1
  return (train.to_client_data(feed='constants'),
          evaluation.to_client_data(allow_empty_clients=True, feed='constants'), num_classes)


def export_sites(config: ml_collections.ConfigDict, out: str,
                 sites: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """Writes `out/<site>` for each site from the config's clients (module docstring).

  Returns:
    Each site's manifest.

  Raises:
    FileExistsError: If a site's directory exists.
    ValueError: If the sites are badly named, outnumber the clients, or the
      config's dataset is not an array dataset.
  """
  train, test, num_classes = raw_client_data(config)
  blocks = site_blocks(list(train.client_ids) + list(test.client_ids), sites)
  for site in sites:
    if os.path.exists(os.path.join(out, site)):
      raise FileExistsError(f'{os.path.join(out, site)} exists; export writes new directories.')
  os.makedirs(out, exist_ok=True)
  return {site: write_site(os.path.join(out, site), site, train, test, blocks[site],
                           num_classes=num_classes) for site in sites}


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` (or `get_config(arg)` for 'path:arg') of a config file."""
  filename, _, arg = path.partition(':')
  if not os.path.isfile(filename):
    raise FileNotFoundError(f'No config file {filename}.')
  spec = importlib.util.spec_from_file_location('fedtff_site_config', filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m fedtff.execution.site_data',
      description="Writes each site's data directory from a config's client data.")
  commands = parser.add_subparsers(dest='command', required=True)
  export = commands.add_parser('export', help='Export a config\'s clients to site directories.')
  export.add_argument('--config', required=True, help='A config file, configs/<name>.py[:arg].')
  export.add_argument('--out', required=True, help='Where to write <out>/<site>/.')
  export.add_argument('--sites', nargs='+', required=True, help='Site names, in order.')
  args = parser.parse_args(argv)
  try:
    manifests = export_sites(load_config(args.config), args.out, args.sites)
  except (OSError, ValueError) as e:
    print(f'site_data: {e}', file=sys.stderr)
    return 1
  for site, manifest in manifests.items():
    print(f'{os.path.join(args.out, site)}: {len(manifest["train_client_ids"])} training and '
          f'{len(manifest["test_client_ids"])} test clients')
  return 0


if __name__ == '__main__':
  sys.exit(main())
