"""engine/metrics_log.py: metrics.jsonl and the TensorBoard event file beside it."""

import struct

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import RecordWriter, masked_crc32c

from md4_jax.engine import metrics_log


def read_events(path) -> list:
  """Every record of an event file, its two checksums verified, parsed as an Event (TensorBoard's reading)."""
  data, events = path.read_bytes(), []
  while data:
    header, header_crc = data[:8], struct.unpack("<I", data[8:12])[0]
    assert masked_crc32c(header) == header_crc
    (length,) = struct.unpack("<Q", header)
    body, body_crc = data[12:12 + length], struct.unpack("<I", data[12 + length:16 + length])[0]
    assert masked_crc32c(body) == body_crc
    events.append(event_pb2.Event.FromString(body))
    data = data[16 + length:]
  return events


def test_the_event_file_holds_each_log_lines_scalars(tmp_path):
  log = metrics_log.MetricsLog(tmp_path)
  log.write(10, {"train/loss": 2.5, "train/bits": 3.6, "note": "text is not a scalar", "nan": float("nan")})
  log.write(20, {"eval/bpt": 1.25})
  log.close()
  (events_file,) = (tmp_path / "tensorboard").iterdir()
  events = read_events(events_file)
  assert events[0].file_version == "brain.Event:2"
  scalars = [(event.step, value.tag, value.simple_value) for event in events[1:] for value in event.summary.value]
  assert scalars == [(10, "train/loss", 2.5), (10, "train/bits", 3.5999999046325684), (20, "eval/bpt", 1.25)]
  assert [row["step"] for row in metrics_log.read_rows(tmp_path / "metrics.jsonl")] == [10, 20]


def test_records_are_framed_as_tensorboardx_frames_them(tmp_path):
  event = event_pb2.Event(step=3, wall_time=1.5, file_version="brain.Event:2")
  theirs = RecordWriter(str(tmp_path / "theirs"))
  theirs.write(event.SerializeToString())
  theirs.close()
  assert metrics_log._record(event.SerializeToString()) == (tmp_path / "theirs").read_bytes()
