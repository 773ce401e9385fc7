"""engine/sample_files.py: samples written batch by batch and segment by segment, whole or not at all."""

import json

import numpy as np
import pytest
from PIL import Image

from md4_jax.data import modality, pictures, tokenizers
from md4_jax.data.sources import digits
from md4_jax.engine import sample_ends, sample_files

TEXT = "naïve café, 東京 🙂 and plain words"


def byte_text() -> modality.Text:
  return modality.Text.of(tokenizers.ByteTokenizer(), 64)


def files_for(tmp_path, kind):
  return sample_files.SampleFiles(tmp_path / "samples" / "step_3_exact", kind, {"step": 3, "seed": 0},
                                  {"name": "exact"}, labelled=kind.kind == "image")


def test_a_text_split_inside_characters_across_segments_is_written_whole(tmp_path):
  data = np.frombuffer(TEXT.encode("utf-8"), np.uint8).astype(np.int32)
  rows = np.stack([data, data[::-1] * 0 + ord("x")])  # row 1: "xxx..."
  writer = files_for(tmp_path, byte_text())
  writer.begin(0, np.zeros(2), in_segments=True)
  row_file = tmp_path / "samples" / "step_3_exact_sample0.txt.partial"
  for begin in range(0, len(data), 5):  # 5-byte segments cut "ï", "é", "東京" and the emoji apart
    writer.add(rows[:, begin:begin + 5], np.zeros((2, 5)))
    if begin == 10:  # a long sample's text so far can be read while it is drawn
      assert row_file.read_text() == TEXT.encode("utf-8")[:15].decode("utf-8", "ignore")
  writer.end(nfe=7, seconds=0.5)
  assert not row_file.exists()
  assert not (tmp_path / "samples" / "step_3_exact.txt").exists()  # only .partial files until closed
  paths = writer.close()
  assert [path.name for path in paths] == ["step_3_exact.txt", "step_3_exact.jsonl"]
  assert paths[0].read_text() == f"=== sample 0 ===\n{TEXT}\n\n=== sample 1 ===\n{'x' * len(data)}\n\n"
  lines = [json.loads(line) for line in paths[1].read_text().splitlines()]
  assert [line["text"] for line in lines] == [TEXT, "x" * len(data)]
  assert lines[0] == {"index": 0, "text": TEXT, "stop": "length", "chars": len(TEXT), "step": 3, "seed": 0,
                      "sampler": {"name": "exact"}, "nfe": 7,
                      "seconds": 0.5, "tokens_per_sec": round(2 * len(data) / 0.5, 1)}
  assert writer.previews == [TEXT, "x" * len(data)]
  assert not list((tmp_path / "samples").glob("*.partial"))


def test_batches_append_and_indices_run_on(tmp_path, monkeypatch):
  monkeypatch.setattr(sample_files, "_CHUNK", 4)  # a row's text is copied in several chunks
  tokenizer = tokenizers.CharTokenizer("ab\"\\\n")
  writer = files_for(tmp_path, modality.Text.of(tokenizer, 8))
  for first, text in ((0, 'ab"\\\nba\\'), (1, "bbbbbbbb")):
    writer.begin(first, np.zeros(1))
    writer.add(tokenizer.encode(text)[None], np.zeros((1, 8)))
    writer.end(nfe=1, seconds=1.0)
  jsonl = writer.close()[1]
  lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
  assert [(line["index"], line["text"]) for line in lines] == [(0, 'ab"\\\nba\\'), (1, "bbbbbbbb")]
  assert writer.previews == ['ab"\\\nba\\']  # the first batch only


@pytest.mark.parametrize("in_segments", [False, True])
def test_a_failure_leaves_no_partial_file_and_no_final_file(tmp_path, in_segments):
  writer = files_for(tmp_path, byte_text())
  writer.begin(0, np.zeros(1), in_segments=in_segments)
  writer.add(np.full((1, 64), ord("a")), np.zeros((1, 64)))
  writer.discard()
  assert list((tmp_path / "samples").iterdir()) == []


def test_images_keep_the_first_batchs_grid_and_every_row_in_the_jsonl(tmp_path):
  images = digits.DIGITS
  writer = files_for(tmp_path, images)
  for first in (0, 3):
    writer.begin(first, np.arange(first, first + 3) % 10)
    writer.add(np.full((3, images.length), first, np.int32), np.ones((3, images.length), np.int32))
    writer.end(nfe=2, seconds=1.0)
  paths = writer.close()
  assert [path.name for path in paths] == ["step_3_exact.png", "step_3_exact_process.png", "step_3_exact.jsonl"]
  lines = [json.loads(line) for line in paths[2].read_text().splitlines()]
  assert [line["label"] for line in lines] == [0, 1, 2, 3, 4, 5]
  assert [line["tokens"][0] for line in lines] == [0, 0, 0, 3, 3, 3]
  grid = np.asarray(Image.open(paths[0]).convert("RGB"))
  np.testing.assert_array_equal(grid, pictures.sample_grid(np.zeros((3, images.length), np.int32), images))


@pytest.mark.parametrize("kind", ["text", "image"])
def test_the_files_are_named_as_before(tmp_path, kind):
  writer = files_for(tmp_path, byte_text() if kind == "text" else digits.DIGITS)
  writer.begin(0, np.zeros(1))
  writer.add(np.full((1, 64), 97), np.ones((1, 64)))
  writer.end(nfe=1, seconds=1.0)
  names = sorted(path.name for path in writer.close())
  assert names == (["step_3_exact.jsonl", "step_3_exact.txt"] if kind == "text" else
                   ["step_3_exact.jsonl", "step_3_exact.png", "step_3_exact_process.png"])


def test_a_text_sample_ends_at_end_of_text_or_a_stop_string_across_segments(tmp_path):
  """sample_ends.Ending, fed piece by piece: the first end-of-text token or the first stop string (even one split
  between two segments) ends the row; the jsonl says which and how many characters were kept."""
  tokenizer = tokenizers.make_tokenizer("char", "", alphabet="abcdefgh ")
  text_modality = modality.Text.of(tokenizer, 12)
  rows = np.stack([tokenizer.encode("abc defg hab"), tokenizer.encode("abcdefgh abc"), tokenizer.encode("hhhhhhhhhhhh")])
  writer = sample_files.SampleFiles(tmp_path / "s", text_modality, {}, {}, labelled=False, stops=("de", "h a"))
  writer.begin(0, np.zeros(3), in_segments=True)
  for begin in range(0, 12, 5):  # row 0's "de" straddles its first two pieces: "abc d" | "efg h" | "ab"
    writer.add(rows[:, begin:begin + 5], np.zeros((3, 5)))
  writer.end(nfe=1, seconds=0.1)
  records = [json.loads(line) for line in writer.close()[1].read_text().splitlines()]
  assert [(r["text"], r["stop"], r["chars"], r.get("stop_string")) for r in records] == [
      ("abc ", "stop_string", 4, "de"), ("abc", "stop_string", 3, "de"), ("hhhhhhhhhhhh", "length", 12, None)]
  ending = sample_ends.Ending(text_modality.decode_bytes, end_id=None, stops=("fg", "h a"))
  pieces = [ending.feed(tokenizer.encode(piece)) for piece in ("abc de", "f", "gh ab")] + [ending.finish()]
  assert "".join(pieces) == "abc de" and ending.record() == {"stop": "stop_string", "stop_string": "fg", "chars": 6}
  with_end = sample_ends.Ending(lambda ids: bytes(int(i) + 97 for i in ids), end_id=3)
  assert with_end.feed([0, 1, 2, 3, 0]) + with_end.feed([1]) + with_end.finish() == "abc"
  assert with_end.record() == {"stop": "end_of_text", "chars": 3}
  assert sample_ends.cut([0, 1, 2], lambda ids: bytes(int(i) + 97 for i in ids), None, ("c",)) == (
      "ab", {"stop": "stop_string", "stop_string": "c", "chars": 2})
