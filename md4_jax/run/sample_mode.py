"""--mode sample's own work: the request (count, length, prompt / infill / completion, class labels) checked before
the checkpoint is restored, then samples drawn and written batch by batch (engine/generate.py), named so that no
earlier file is overwritten, with a refusal up front of what cannot fit on the disk."""

import shutil

import jax
import numpy as np
from etils import epath

from md4_jax.data import pictures, pipeline
from md4_jax.engine import generate, sample_ends, sample_files
from md4_jax.errors import UserError
from md4_jax.run import conditioning, loop
from md4_jax.storage import files
from md4_jax.storage import paths as storage


def parse_request(config, modality, request) -> dict:
  """--mode sample's draw: count, length, start_of (generate.tiled_start / rows_start), class labels given to the
  samples in turn (or None), held-out originals (--complete)."""
  count = request.num_samples or config.sampler.num_samples
  prompt, infill, gap_char, complete = request.prompt, request.infill, request.gap_char, request.complete
  class_label = request.class_label
  text_flags = [flag for flag, value in (("--prompt", prompt), ("--infill", infill), ("--gap_char", gap_char),
                                        ("--stop", request.stop)) if value is not None]
  if modality.kind == "image" and text_flags:
    raise UserError(f"{', '.join(text_flags)} condition text runs; this run models images (use --complete or "
                    "--class_label)")
  if modality.kind == "text" and complete is not None:
    raise UserError("--complete completes held-out images; this run models text (use --prompt or --infill)")
  conditional_classes = modality.num_classes if config.model.class_conditional else 0
  labels = conditioning.parse_class_labels(class_label, conditional_classes) if class_label is not None else None
  mask_id = modality.vocab_size
  if complete is not None:
    data = pipeline.load_data(config.data, config.eval.split, modality)
    rows = [data.eval[i] for i in range(min(count, len(data.eval)))]
    originals = np.stack([row["tokens"] for row in rows])
    if labels is None and conditional_classes:
      labels = np.asarray([row["label"] for row in rows], np.int32)  # complete each image as its own class
    start = conditioning.completion_start(originals, modality, complete)
    return {"count": len(rows), "length": modality.length, "start_of": generate.rows_start(start, mask_id),
            "labels": labels, "originals": originals, "start": start, "stops": (), "keep": 0}
  length = modality.length if request.length is None else request.length  # checked in main
  known = np.zeros(0, np.int32)
  if modality.kind == "text":
    known = conditioning.known_tokens(modality.tokenizer, length, prompt=prompt, infill=infill, gap_char=gap_char)
  return {"count": count, "length": length, "start_of": generate.tiled_start(known, mask_id), "labels": labels,
          "originals": None, "stops": tuple(request.stop or ()), "keep": len(known) if prompt is not None else 0}


def write(experiment, params, workdir: epath.Path, request: dict, record: dict) -> dict:
  """--mode sample: samples from the restored checkpoint, written to samples/step_N_<sampler>[_lenN][_cache][_k].*;
  with --complete also step_N_<sampler>_completion.png (original | kept part | completion per row). Returns the
  paths and the first batch's samples (all of them when --num_samples <= sampler.batch_size; none for samples
  over generate.KEEP_TOKENS tokens: read the files)."""
  key = loop.sample_key(jax.random.key(record["seed"]), record["step"])
  name = f"step_{record['step']}_{experiment.sampler_settings.name}" + _stem_details(experiment, request["length"])
  stem = _unused_stem(workdir / "samples", name)
  _check_room(workdir, request["count"], request["length"])
  written = generate.write_samples(experiment, params, stem, key, record, count=request["count"],
                                   length=request["length"], start_of=request["start_of"],
                                   class_labels=request["labels"], stops=request["stops"], keep=request["keep"])
  paths = list(written.paths)
  if request["originals"] is not None and jax.process_index() == 0:
    paths.append(stem.with_name(stem.name + "_completion.png"))
    shown = len(written.first_tokens)
    files.write_png_atomically(paths[-1], pictures.completion_rows(request["originals"][:shown],
                                                                   request["start"][:shown], written.first_tokens,
                                                                   experiment.modality))
  texts = None
  if experiment.modality.kind == "text" and written.first_tokens is not None:  # each cut where its file's ends
    end_id = getattr(experiment.modality.tokenizer, "eos_id", None)
    texts = [sample_ends.cut(row, experiment.modality.decode_bytes, end_id, request["stops"], request["keep"])[0]
             for row in written.first_tokens]
  if jax.process_index() == 0:
    _print_samples(experiment, written, texts, record, paths)
  return {"samples": texts, "tokens": written.first_tokens, "path": str(paths[0]) if paths else None,
          "nfe": written.nfe, "paths": [str(path) for path in paths], "count": written.count}


def _print_samples(experiment, written, texts, record, paths) -> None:
  """The first batch's texts (cut when long) and one summary line."""
  if experiment.modality.kind == "text":
    shown = texts if texts is not None else written.previews
    for i, text in enumerate(shown):
      cut = len(text) >= sample_files.PREVIEW_CHARS and texts is None or len(text) > sample_files.PREVIEW_CHARS
      print(f"=== sample {i} ===\n{text[:sample_files.PREVIEW_CHARS]}" +
            (f" ... ({written.length:,} tokens: the whole sample is in the .txt)" if cut else "") + "\n")
    if written.count > len(shown):
      print(f"(the first {len(shown)} of {written.count:,} samples; all of them are in the files below)\n")
  print(f"{written.count:,} samples from step {record['step']} ({record['params']} params) with sampler "
        f"{experiment.sampler_settings.name}: {written.nfe:,} network calls, {written.seconds:.1f} s "
        f"({written.tokens_per_sec:.0f} tokens/s); wrote " + ", ".join(str(path) for path in paths))


def _stem_details(experiment, length: int) -> str:
  """What sets these samples apart in their file name: a length other than the trained one, a KV cache."""
  details = "" if length == experiment.modality.length else f"_len{length}"
  cache = experiment.sampler_settings.kv_cache
  return details + ("" if cache == "none" else f"_{cache}")


def _check_room(workdir: epath.Path, count: int, length: int) -> None:
  """Refuses in one line samples that cannot fit on the workdir's disk: every token takes at least one byte in
  the .txt and one in the .jsonl (text), or a digit and a comma in the .jsonl (images), plus ~300 bytes of
  settings per .jsonl line."""
  if storage.is_remote(workdir):
    return  # a bucket has no fixed size
  needed = count * (2 * length + 300)
  free = shutil.disk_usage(workdir).free
  if needed > free:
    raise UserError(f"{count:,} samples of {length:,} tokens need at least {_size(needed)} in "
                    f"{workdir / 'samples'}, and its disk has {_size(free)} free: ask for fewer (--num_samples, "
                    "--length) or free space")


def _size(num_bytes: int) -> str:
  for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:,.1f} {unit}"
  return f"{num_bytes} bytes"


def _unused_stem(directory: epath.Path, name: str) -> epath.Path:
  """directory/name, or name_2, name_3, ...: earlier samples are never overwritten."""
  stem, index = directory / name, 1
  while any(stem.with_name(stem.name + suffix).exists() for suffix in (".txt", ".jsonl", ".png")):
    index += 1
    stem = directory / f"{name}_{index}"
  return stem
