"""Pixels -> tokens -> PNG: exact round trips, channel order, the mask colour, reverse-process frames."""

import numpy as np
from PIL import Image as PILImage

from md4_jax.data import pictures
from md4_jax.data.sources import digits
from md4_jax.data.modality import Image
from md4_jax.run import conditioning
from md4_jax.storage import files

RGB = Image(height=4, width=5, channels=3, levels=256)


def png_pixels(path):
  return np.asarray(PILImage.open(path).convert("RGB"))


def test_pixels_tokens_png_round_trip_is_exact(tmp_path):
  image_HxWxC = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
  tokens_D = image_HxWxC.reshape(-1)  # channel-interleaved per pixel, as the data sources write them
  np.testing.assert_array_equal(pictures.to_rgb(tokens_D[None], RGB)[0], image_HxWxC)
  files.write_png_atomically(tmp_path / "x.png", pictures.to_rgb(tokens_D[None], RGB)[0])
  np.testing.assert_array_equal(png_pixels(tmp_path / "x.png"), image_HxWxC)


def test_a_red_image_decodes_red(tmp_path):
  red_tokens = np.tile([255, 0, 0], 4 * 5)  # every pixel (R, G, B) = (255, 0, 0)
  files.write_png_atomically(tmp_path / "red.png", pictures.to_rgb(red_tokens[None], RGB)[0])
  pixels = png_pixels(tmp_path / "red.png")
  assert (pixels[..., 0] == 255).all() and (pixels[..., 1:] == 0).all()


def test_grey_levels_scale_to_0_255_and_masks_are_magenta():
  images = digits.DIGITS  # 17 levels
  tokens = np.array([[0, 16, 8, 17] + [0] * 60])  # 17 = the mask id
  rgb = pictures.to_rgb(tokens, images)[0].reshape(-1, 3)
  np.testing.assert_array_equal(rgb[:4], [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 255]])
  partly_masked = np.array([[256, 7, 256] + [0] * 57])
  np.testing.assert_array_equal(pictures.to_rgb(partly_masked, RGB).reshape(-1, 3)[0], [255, 7, 255])


def test_sample_grid_lays_out_enlarged_cells():
  images = digits.DIGITS
  tokens = np.full((5, 64), 16)
  picture = pictures.sample_grid(tokens, images)  # 3 x 2 grid of 64-pixel cells (8x8 enlarged 8 times)
  gap = pictures.GAP
  assert picture.shape == (2 * (64 + gap) + gap, 3 * (64 + gap) + gap, 3)
  assert (picture[gap: gap + 64, gap: gap + 64] == 255).all()


def test_reverse_process_frames_replay_the_order():
  tokens = np.array([[3, 4, 5, 6]])
  order = np.array([[0, 2, 1, 4]])  # position 0 was given; the others were filled at clocks 2, 1, 4
  frames = pictures.reverse_process_frames(tokens, order, num_frames=5, mask_id=9)
  np.testing.assert_array_equal(frames[0], [[3, 9, 9, 9], [3, 9, 5, 9], [3, 4, 5, 9], [3, 4, 5, 9], [3, 4, 5, 6]])


def test_completion_regions_keep_the_named_part():
  image = Image(height=4, width=4, channels=3, levels=256)
  keep = {region: conditioning.kept_region(image, region).reshape(4, 4, 3)[..., 0] for region in
          conditioning.COMPLETION_REGIONS}
  np.testing.assert_array_equal(keep["top"], np.arange(4)[:, None].repeat(4, 1) < 2)
  np.testing.assert_array_equal(keep["left"], np.arange(4)[None, :].repeat(4, 0) < 2)
  np.testing.assert_array_equal(np.argwhere(keep["center"]), [[1, 1], [1, 2], [2, 1], [2, 2]])
  tokens = np.arange(48)[None] % 256
  start = conditioning.completion_start(tokens, image, "top")
  assert (start[0, :24] == tokens[0, :24]).all() and (start[0, 24:] == 256).all()
