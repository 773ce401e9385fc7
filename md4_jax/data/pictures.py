"""Pictures of image samples: token rows -> RGB pixels, sample grids, reverse-process strips, completions.

Tokens are sub-pixel values in [0, levels) (channel-interleaved per pixel) or the mask id `levels`;
values are scaled to 0..255 (level v -> round(255 v / (levels - 1))) and grey images drawn in grey.
A masked sub-pixel takes that channel of MASK_COLOUR (magenta), so a fully masked pixel is magenta
and a grey pixel that is masked stands out. Small images are enlarged (nearest neighbour) to at
least 64 pixels a side, so an 8x8 digit is visible.
"""

import numpy as np

MASK_COLOUR = np.array([255, 0, 255], np.uint8)
GAP = 2  # pixels between cells, drawn white


def to_rgb(tokens_NxL, image) -> np.ndarray:
  """[N, L] tokens of a data.modality.Image (L = H W C) -> [N, H, W, 3] uint8."""
  tokens = np.asarray(tokens_NxL).reshape(-1, image.height, image.width, image.channels)
  masked = tokens >= image.levels
  values = np.round(np.clip(tokens, 0, image.levels - 1) * (255.0 / (image.levels - 1))).astype(np.uint8)
  if image.channels == 1:
    rgb = np.repeat(values, 3, axis=-1)
    return np.where(np.repeat(masked, 3, axis=-1), MASK_COLOUR, rgb)
  colour = np.broadcast_to(MASK_COLOUR[: image.channels], values.shape)
  return np.where(masked, colour, values)


def enlarge(pixels_NxHxWx3: np.ndarray, min_side: int = 64) -> np.ndarray:
  scale = max(1, -(-min_side // pixels_NxHxWx3.shape[1]))
  return pixels_NxHxWx3.repeat(scale, axis=1).repeat(scale, axis=2)


def grid(cells_RxCxHxWx3: np.ndarray) -> np.ndarray:
  """Rows x columns of equally sized cells -> one picture with white gaps."""
  rows, columns, height, width, _ = cells_RxCxHxWx3.shape
  out = np.full((rows * (height + GAP) + GAP, columns * (width + GAP) + GAP, 3), 255, np.uint8)
  for r in range(rows):
    for c in range(columns):
      top, left = GAP + r * (height + GAP), GAP + c * (width + GAP)
      out[top: top + height, left: left + width] = cells_RxCxHxWx3[r, c]
  return out


def sample_grid(tokens_NxL, image, columns: int = 0) -> np.ndarray:
  """The samples in a near-square grid (the last row padded with white cells)."""
  pixels = enlarge(to_rgb(tokens_NxL, image))
  count = len(pixels)
  columns = columns or int(np.ceil(np.sqrt(count)))
  rows = -(-count // columns)
  padded = np.concatenate([pixels, np.full((rows * columns - count,) + pixels.shape[1:], 255, np.uint8)])
  return grid(padded.reshape(rows, columns, *pixels.shape[1:]))


def reverse_process_frames(tokens_NxL, order_NxL, num_frames: int, mask_id: int) -> np.ndarray:
  """[N, F, D]: frame f shows the tokens filled by sampler clock round(f / (F - 1) * last clock), the rest
  masked: frame 0 is the start (only given tokens), the last the finished sample. Filled tokens never
  change, so the frames are the sampler's own states."""
  tokens, order = np.asarray(tokens_NxL), np.asarray(order_NxL)
  last = max(int(order.max()), 1)
  thresholds = np.round(np.linspace(0, last, num_frames)).astype(int)
  return np.stack([np.where(order <= threshold, tokens, mask_id) for threshold in thresholds], axis=1)


def reverse_process_strip(tokens_NxL, order_NxL, image, num_frames: int = 8) -> np.ndarray:
  """One row per sample, frames left (all masked) to right (finished)."""
  frames_NxFxD = reverse_process_frames(tokens_NxL, order_NxL, num_frames, image.levels)
  count = len(frames_NxFxD)
  pixels = enlarge(to_rgb(frames_NxFxD.reshape(count * num_frames, -1), image))
  return grid(pixels.reshape(count, num_frames, *pixels.shape[1:]))


def completion_rows(originals_NxL, starts_NxL, completions_NxL, image) -> np.ndarray:
  """One row per image: the original, what was kept (the rest masked), the completion."""
  cells = [enlarge(to_rgb(tokens, image)) for tokens in (originals_NxL, starts_NxL, completions_NxL)]
  return grid(np.stack(cells, axis=1))
