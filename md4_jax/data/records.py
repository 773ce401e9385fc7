"""Prepared datasets on disk: rows of fixed-shape arrays as array_record shards plus the tfds metadata.

`write` puts each split's rows, in the order given, into array_record shards of about SHARD_BYTES,
then describes them with `tfds.folder_dataset.write_metadata`, so that `tfds.builder_from_directory`
opens them as random-access sources (`as_data_source`). No TensorFlow is involved, and neither is a
tfds builder: `download_and_prepare` sends every example through tfds's shuffler, which holds about
1 GB in memory and then spills to temporary buckets through tf.io.gfile, so without TensorFlow it
fails once a split passes 1 GB. Here one row at a time is in memory, however large the split.

Layout of `builder_dir` (<dataset name>/<version>, what `tfds.builder_from_directory` expects):
  dataset_info.json, features.json                   written last, by tfds
  <dataset name>-<split>.array_record-NNNNN-of-NNNNN   the shards, rows in order across them
"""

import pathlib
import shutil

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

SHARD_BYTES = 1 << 30  # array bytes per shard at most, about what tfds aims for; read at each write (tests lower it)
# Measured with array_record 0.8.6: reading one record by index takes time that grows with the shard's record
# count (~40 us at 20k records, ~400 us at 200k), and training reads row by row: shards stay under this many rows.
SHARD_ROWS = 16_384


def _row_bytes(row_features: tfds.features.FeaturesDict) -> int:
  """Bytes of a row's arrays; scalars (a class label) are left out, the rule image shards were first cut by."""
  return sum(int(np.prod(feature.shape)) * np.dtype(feature.np_dtype).itemsize
             for feature in row_features.values() if feature.shape)


def write_split(builder_dir: pathlib.Path, split: str, rows,
                row_features: tfds.features.FeaturesDict) -> tfds.core.SplitInfo:
  """Writes `rows` (feature dicts, consumed in order) into array_record shards; returns the split's SplitInfo.

  Each shard holds SHARD_BYTES of arrays or SHARD_ROWS rows, whichever is fewer (at least one row). An error
  raised by `rows` itself (a
  reader's check at its end, say) stops the split with that error.
  """
  shard_lengths, num_bytes, writer = [], 0, None
  shard_rows = max(1, min(SHARD_ROWS, SHARD_BYTES // max(1, _row_bytes(row_features))))
  try:
    for index, row in enumerate(rows):
      if index % shard_rows == 0:  # shards get their final names once their number is known
        if writer:
          writer.close()
        writer = array_record_module.ArrayRecordWriter(str(builder_dir / f"{split}-{len(shard_lengths)}.tmp"),
                                                       "group_size:1")  # as tfds writes them: random access
        shard_lengths.append(0)
      record = row_features.serialize_example(row)
      writer.write(record)
      shard_lengths[-1] += 1
      num_bytes += len(record)
  finally:
    if writer:
      writer.close()
  if not shard_lengths:  # callers say why in their own terms first; this guards the metadata
    raise ValueError(f"split {split!r} has no rows, and tfds cannot describe an empty split")
  template = tfds.core.ShardedFileTemplate(data_dir=builder_dir, dataset_name=builder_dir.parent.name, split=split,
                                           filetype_suffix="array_record")
  for shard, path in enumerate(template.sharded_filepaths(len(shard_lengths))):
    (builder_dir / f"{split}-{shard}.tmp").rename(path)
  return tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=num_bytes, filename_template=template)


def write(builder_dir: pathlib.Path, row_features: tfds.features.FeaturesDict, split_rows: dict, *,
          description: str) -> dict[str, tfds.core.SplitInfo]:
  """Writes every split of `split_rows` ({split: rows}, one after another) and then the metadata.

  Whatever the dataset directory (builder_dir's parent) held before is removed first: a run cut
  off before its caller marked the data complete. On any failure it is removed again, so nothing
  half-written stays behind. Returns {split: SplitInfo} (`num_examples` is the split's row count).
  """
  shutil.rmtree(builder_dir.parent, ignore_errors=True)
  builder_dir.mkdir(parents=True)
  try:
    split_infos = {split: write_split(builder_dir, split, rows, row_features) for split, rows in split_rows.items()}
    # The documented way to describe files tfds did not write; check_data=False: that check needs TensorFlow.
    tfds.folder_dataset.write_metadata(
        data_dir=builder_dir, features=row_features, split_infos=list(split_infos.values()), check_data=False,
        filename_template=next(iter(split_infos.values())).filename_template.template, disable_shuffling=True,
        description=description)
  except BaseException:
    shutil.rmtree(builder_dir.parent, ignore_errors=True)
    raise
  return split_infos
