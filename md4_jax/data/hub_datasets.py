"""OpenWebText, FineWeb-Edu and LM1B: documents -> packed token rows in array_record, read with tfds.

LM1B's sentences come from its release files (see lm1b_text.py: read, detokenized, the
official held-out file as "validation"); everything below the reading step is shared.

`prepare` reads the text of every document from parquet or JSON-lines shards
(from `manual_dir`, or downloaded from the Hugging Face hub), tokenizes it,
appends the tokenizer's end-of-sequence id, concatenates the documents in
shard order and cuts the stream into rows of exactly `seq_len` tokens (the
final partial row is dropped; its length is recorded as the dropped tail).
The rows are streamed into array_record shards described by tfds metadata (records.py; not a tfds
builder, whose shuffler needs TensorFlow once a split passes 1 GB), which `load` opens with `tfds`
as random-access sources; no TensorFlow is involved. Directories written by the earlier tfds builder
(tokens stored as int64 lists) load the same way.

Held-out rule: a document belongs to "validation" when the first 8 bytes of
the SHA-256 of its UTF-8 text, read as a big-endian integer, are < 5 modulo
1000 (0.5% of documents); every other document belongs to "train". The rule
depends on the text alone, so it does not change with shard order, shard
boundaries, `max_documents` or the tokenizer. Each split is packed on its own.
Empty documents are skipped.

On disk, under `data_dir/<source>[/<subset>]/seq<seq_len>/`:
  meta.json                        what was prepared (written last: its presence means complete)
  downloads/                       the hub shards, when they were downloaded (no manual_dir)
  packed_tokens/1.0.0/             the TFDS dataset: dataset_info.json, features.json and
                                   packed_tokens-{train,validation}.array_record-NNNNN-of-NNNNN
"""

import dataclasses
import gzip
import hashlib
import itertools
import json
import pathlib
import urllib.parse
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import tensorflow_datasets as tfds

from md4_jax.data import download, lm1b_text, records
from md4_jax.errors import UserError
from md4_jax.storage.files import write_text_atomically

SPLITS = ("train", "validation")
HELD_OUT_PER_MILLE = 5  # documents whose text hash % 1000 is below this go to "validation"
_BUILDER_DIR = "packed_tokens/1.0.0"  # <dataset name>/<version>: the name the tfds builder of earlier versions gave


@dataclasses.dataclass(frozen=True)
class HubSource:
  """Where a source lives on the Hugging Face hub and how its shards look."""

  repo: str  # dataset repository id on huggingface.co
  revision: str  # the git revision the download is pinned to
  default_subset: str  # "" when the dataset has no subsets
  shard_dirs: dict  # subset -> directory of its shards inside the repository
  shard_count: dict  # subset -> number of shards, where known (others are listed through the hub API)
  shard_name: str  # file name of shard i, formatted with `i`
  text_column: str = "text"


# Facts found with the search tool (hub pages, and public code that downloads these files):
# - Skylion007/openwebtext: `main` has long held a loading script with tar archives; parquet
#   conversions by the owner (PR #18, commit 963532436460638ab26b7633e23776e6c7e37d59:
#   data/train-000NN-of-00093.parquet; PR #20: ...-of-00080) exist, but whether one was merged
#   could not be confirmed. The hub's own conversion, branch refs/convert/parquet, holds
#   plain_text/train/0000.parquet .. 0079.parquet (80 shards, column "text"; last converter commit
#   6d31bdb, March 2024) and is what public scripts download, so it is used here. It is a branch,
#   not a commit: a re-conversion by the hub would change it.
# - HuggingFaceFW/fineweb-edu, subset sample-10BT = sample/10BT/000_00000.parquet .. 013_00000.parquet
#   (14 shards, ~28 GB, column "text"), pinned at commit fc9850dff5e2d0f8f776efe41b24a1c49556cfc5.
#   The dataset card maps subsets sample-100BT and sample-350BT to sample/100BT/* and sample/350BT/*.
HUB_RELEASES = {
    "openwebtext": HubSource(
        repo="Skylion007/openwebtext", revision="refs%2Fconvert%2Fparquet", default_subset="",
        shard_dirs={"": "plain_text/train"}, shard_count={"": 80}, shard_name="{:04d}.parquet"),
    "fineweb_edu": HubSource(
        repo="HuggingFaceFW/fineweb-edu", revision="fc9850dff5e2d0f8f776efe41b24a1c49556cfc5",
        default_subset="sample-10BT",
        shard_dirs={"sample-10BT": "sample/10BT", "sample-100BT": "sample/100BT", "sample-350BT": "sample/350BT"},
        shard_count={"sample-10BT": 14}, shard_name="{:03d}_00000.parquet"),
}


def is_held_out(text: str) -> bool:
  """The held-out rule (module docstring): a stable hash of the text alone."""
  digest = hashlib.sha256(text.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % 1000 < HELD_OUT_PER_MILLE


def _source(source: str, subset: str) -> tuple[HubSource | None, str]:
  """The source's table entry and the subset with its default filled in (lm1b: no entry, no subset)."""
  if source == "lm1b":
    if subset:
      raise UserError(f"subset={subset!r}: lm1b has no subsets")
    return None, ""
  if source not in HUB_RELEASES:
    raise UserError(f"data.source={source!r} is not a hub dataset; choose one of {tuple(HUB_RELEASES)}")
  entry = HUB_RELEASES[source]
  subset = subset or entry.default_subset
  if subset not in entry.shard_dirs:
    known = ", ".join(repr(s) for s in entry.shard_dirs if s) or "none"
    raise UserError(f"data.{source}.subset={subset!r} is not a subset of {source}; known subsets: {known}")
  return entry, subset


def prepared_dir(source: str, data_dir: pathlib.Path, seq_len: int, subset: str = "") -> pathlib.Path:
  """data_dir/<source>[/<subset>]/seq<seq_len>: where `prepare` writes and `load` reads."""
  _, subset = _source(source, subset)
  base = pathlib.Path(data_dir).expanduser() / source
  return (base / subset if subset else base) / f"seq{seq_len}"


SHARD_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")


def local_shards(directory: pathlib.Path) -> list[pathlib.Path]:
  """Every shard file under `directory` (recursively, so a mirrored hub tree works), sorted by path."""
  if not directory.is_dir():
    raise UserError(f"data.manual_dir={str(directory)!r} is not a directory; pass the directory holding "
                    f"the shards ({', '.join('*' + s for s in SHARD_SUFFIXES)})")
  shards = sorted((p for p in directory.rglob("*") if p.is_file() and p.name.endswith(SHARD_SUFFIXES)),
                  key=lambda p: p.relative_to(directory).as_posix())
  if not shards:
    raise UserError(f"no shards in data.manual_dir={str(directory)!r}: expected files matching "
                    f"{', '.join('*' + s for s in SHARD_SUFFIXES)} (each document's text in a 'text' field)")
  return shards


def documents(shards: list[pathlib.Path], text_column: str, max_documents: int = 0):
  """The non-empty texts of `shards` in order, at most `max_documents` (0 = all), read in bounded batches."""
  count = 0
  for shard in shards:
    for text in _shard_texts(shard, text_column):
      if not text:
        continue
      if max_documents and count >= max_documents:
        return
      count += 1
      yield text


def _shard_texts(shard: pathlib.Path, text_column: str):
  if shard.name.endswith(".parquet"):
    parquet = pq.ParquetFile(shard)
    if text_column not in parquet.schema_arrow.names:
      raise UserError(f"{shard} has no {text_column!r} column (columns: {parquet.schema_arrow.names})")
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_column]):  # memory: one batch
      yield from batch.column(0).to_pylist()
    return
  opener = gzip.open if shard.name.endswith(".gz") else open
  with opener(shard, "rt", encoding="utf-8") as lines:
    for number, line in enumerate(lines, 1):
      if line.strip():
        record = json.loads(line)
        if text_column not in record:
          raise UserError(f"{shard} line {number} has no {text_column!r} field")
        yield record[text_column]


def list_hub_files(repo: str, revision: str, directory: str, suffix: str) -> list[str]:
  """Paths under `directory` at `revision`, from the hub's tree API (for subsets without a pinned count)."""
  url = f"https://huggingface.co/api/datasets/{repo}/tree/{revision}/{directory}"
  try:
    with urllib.request.urlopen(url, timeout=download.READ_TIMEOUT_S) as response:
      entries = json.load(response)
  except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
    raise UserError(f"listing {directory}/ of {repo} at {url} failed ({error}); download its parquet files "
                    "by hand and pass --config.data.manual_dir=DIR holding them") from error
  return sorted(entry["path"] for entry in entries if entry["path"].endswith(suffix))


def features(seq_len: int) -> tfds.features.FeaturesDict:
  """The row format: int32 tokens as raw bytes (tfds's default, an int64 list, wrote ~2.5x slower, no smaller)."""
  return tfds.features.FeaturesDict({"tokens": tfds.features.Tensor(shape=(seq_len,), dtype=np.int32,
                                                                    encoding=tfds.features.Encoding.BYTES)})


def packed_rows(texts, tokenizer, seq_len: int, split: str, stats: dict):
  """Yields {"tokens": [seq_len] int32} rows of the texts packed in order; fills `stats` as it goes.

  Row i holds tokens [i*L, (i+1)*L) of the split's stream. In memory: under one row plus one document.
  """
  pending_ids = []  # token ids not yet in a row: [< seq_len + one document]
  pending_len = 0
  for text in texts:
    ids = np.asarray(tokenizer.encode(text), np.int32)
    pending_ids += [ids, np.asarray([tokenizer.eos_id], np.int32)]
    pending_len += len(ids) + 1
    stats["documents"] += 1
    if pending_len < seq_len:
      continue
    stream = np.concatenate(pending_ids)
    num_rows = len(stream) // seq_len
    for row in stream[: num_rows * seq_len].reshape(num_rows, seq_len):
      yield {"tokens": row}
      stats["rows"] += 1
    pending_ids = [stream[num_rows * seq_len:]]
    pending_len = len(pending_ids[0])
  stats["tokens"] = stats["rows"] * seq_len
  stats["dropped_tail_tokens"] = pending_len
  if not stats["rows"]:  # tfds cannot describe an empty split; say why (records.write then removes its files)
    raise UserError(f"the {split} split got {pending_len} tokens from {stats['documents']} documents, fewer "
                    f"than one row of {seq_len}; use more documents (data.max_documents) or a shorter "
                    "data.seq_len")


def prepare(source: str, data_dir: pathlib.Path, *, tokenizer, seq_len: int = 1024, manual_dir: str = "",
            subset: str = "", max_documents: int = 0) -> pathlib.Path:
  """Writes the packed splits of `source` once; returns their directory (see the module docstring)."""
  entry, subset = _source(source, subset)
  if seq_len < 1:
    raise UserError(f"data.seq_len={seq_len} must be positive")
  if tokenizer.eos_id is None:
    raise UserError(f"{source} is packed as documents each followed by end-of-text, which the "
                    f"{tokenizer.name} tokenizer does not have; set data.tokenizer='gpt2'")
  out_dir = prepared_dir(source, data_dir, seq_len, subset)
  request = {"source": source, "subset": subset, "seq_len": seq_len, "tokenizer": tokenizer.to_json(),
             "max_documents": max_documents}
  request = json.loads(json.dumps(request))  # compare as read back from meta.json (tuples become lists)
  meta_path = out_dir / "meta.json"
  if meta_path.exists():
    meta = json.loads(meta_path.read_text())
    differ = [key for key, value in request.items() if meta.get(key) != value]
    if not differ:
      return out_dir
    raise UserError(f"{out_dir} already holds {source} prepared with a different {', '.join(differ)}; "
                    "delete that directory or choose another --config.data.dir")
  if source == "lm1b":
    files = lm1b_text.split_files(pathlib.Path(manual_dir).expanduser() if manual_dir
                                  else lm1b_text.download(out_dir / "downloads"))
    shards = files["train"] + files["validation"]
    split_documents = {"train": lambda: itertools.islice(lm1b_text.sentences(files["train"]), max_documents or None),
                       "validation": lambda: lm1b_text.sentences(files["validation"])}
  else:
    if manual_dir:
      shards = local_shards(pathlib.Path(manual_dir).expanduser())
    else:
      shards = download_shards(source, subset, out_dir / "downloads")

    def split_documents_of(held_out):
      return lambda: (text for text in documents(shards, entry.text_column, max_documents)
                      if is_held_out(text) == held_out)

    split_documents = {"train": split_documents_of(False), "validation": split_documents_of(True)}
  stats = {split: {"rows": 0, "tokens": 0, "dropped_tail_tokens": 0, "documents": 0} for split in SPLITS}
  records.write(out_dir / _BUILDER_DIR, features(seq_len),
                {split: packed_rows(split_documents[split](), tokenizer, seq_len, split, stats[split])
                 for split in SPLITS},
                description="Documents tokenized, each followed by eos, concatenated and cut into rows.")
  meta = {**request, "shards": [shard.name for shard in shards],
          **{f"{key}_per_split": {split: stats[split][key] for split in SPLITS}
             for key in ("rows", "tokens", "dropped_tail_tokens", "documents")}}
  write_text_atomically(meta_path, json.dumps(meta, indent=2))
  return out_dir


def download_shards(source: str, subset: str, dest_dir: pathlib.Path) -> list[pathlib.Path]:
  """Downloads the subset's shards (pinned revision, plain HTTPS) into dest_dir; fails fast when offline."""
  entry, subset = _source(source, subset)
  directory = entry.shard_dirs[subset]
  base_url = f"https://huggingface.co/datasets/{entry.repo}/resolve/{entry.revision}/"
  manual_hint = ("put all the shards in one directory and pass --config.data.manual_dir=DIR "
                 f"(files from {base_url}{directory}/)")
  if not download.host_reachable("https://huggingface.co", timeout_s=download.REACH_TIMEOUT_S):
    first = entry.shard_name.format(0)
    raise UserError(
        f"cannot download {source}: huggingface.co is unreachable from this machine. On a machine with internet "
        f"access, download the parquet files under {directory}/ of the hub dataset {entry.repo} at revision "
        f"{urllib.parse.unquote(entry.revision)} (e.g. {base_url}{directory}/{first}), then {manual_hint}")
  if subset in entry.shard_count:
    names = [f"{directory}/{entry.shard_name.format(i)}" for i in range(entry.shard_count[subset])]
  else:
    names = list_hub_files(entry.repo, entry.revision, directory, suffix=".parquet")
  # No checksums: the shards' SHA-256 values were not found offline; a finished file is kept as is.
  return [download.fetch(base_url + name, pathlib.Path(dest_dir) / name, sha256=None,
                         what=f"{source} shard {name}", manual_hint=manual_hint) for name in names]


def load(source: str, data_dir: pathlib.Path, *, seq_len: int, subset: str = "") -> tuple[dict, dict]:
  """({"train": rows, "validation": rows}, meta): random-access sources of {"tokens": [seq_len] int32}."""
  out_dir = prepared_dir(source, data_dir, seq_len, subset)
  meta_path = out_dir / "meta.json"
  if not meta_path.exists():
    raise UserError(f"{source} with seq_len {seq_len} is not prepared in {out_dir}; run "
                    "`python launch.py --config configs/owt_small.py --workdir DIR --mode prepare` "
                    f"with --config.data.source={source} and --config.data.dir set to {data_dir}")
  builder = tfds.builder_from_directory(str(out_dir / _BUILDER_DIR))
  return {split: builder.as_data_source(split=split) for split in SPLITS}, json.loads(meta_path.read_text())
