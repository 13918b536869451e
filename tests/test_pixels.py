"""imgclf.pixels.to_rgb: the conversion PrepareData, training, evaluation and inference share.

Transparency is what the other modes' tests (tests/test_preprocess*.py) leave open: a PNG colour
key (``tRNS``) on grey, RGB and 16-bit pixels is transparency like an alpha channel, so its
pixels become white, the background every alpha image gets."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf.data import image_to_uint8
from imgclf.pixels import WHITE, scale_to_uint8, to_rgb


def reopened(image: Image.Image, fmt: str = "PNG", **save) -> Image.Image:
    """``image`` as a decoder gives it back from a file (with ``info["transparency"]``)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    opened.load()
    return opened


def rgb_list(image: Image.Image) -> list:
    return np.asarray(to_rgb(image)).tolist()


def test_an_rgb_image_without_transparency_is_returned_as_is():
    image = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(image) is image


@pytest.mark.parametrize("mode, pixels, key, expected", [
    ("L", [[0, 100]], 0, [[WHITE, (100, 100, 100)]]),
    ("L", [[0, 100]], 100, [[(0, 0, 0), WHITE]]),
    ("RGB", [[(10, 20, 30), (10, 20, 31)]], (10, 20, 30), [[WHITE, (10, 20, 31)]]),
])
def test_a_colour_key_makes_its_pixels_white_and_leaves_the_others(mode, pixels, key, expected):
    image = reopened(Image.fromarray(np.array(pixels, dtype=np.uint8), mode), transparency=key)
    assert image.info["transparency"] == key
    assert rgb_list(image) == [[list(p) for p in row] for row in expected]


def test_a_16_bit_colour_key_whitens_its_pixels_and_the_rest_are_scaled():
    image = reopened(Image.fromarray(np.array([[1000, 25700, 1000, 65535]], dtype=np.uint16)), transparency=1000)
    assert image.mode == "I;16" and image.info["transparency"] == 1000
    assert rgb_list(image) == [[list(WHITE), [100] * 3, list(WHITE), [255] * 3]]


def test_a_16_bit_image_without_a_key_is_only_scaled():
    image = reopened(Image.fromarray(np.array([[1000, 25700]], dtype=np.uint16)))
    assert "transparency" not in image.info
    assert rgb_list(image) == [[[4] * 3, [100] * 3]]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_a_palette_images_transparent_index_is_white(fmt):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert rgb_list(reopened(palette, fmt, transparency=0)) == [[list(WHITE), [200, 0, 0]]]


def test_alpha_is_composited_on_white_by_its_weight():
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128], [200, 100, 0, 51]]], dtype=np.uint8)
    assert rgb_list(Image.fromarray(rgba, "RGBA")) == [[[255] * 3, [0] * 3, [127] * 3, [244, 224, 204]]]


def test_training_inference_and_preprocessing_see_a_transparent_background_as_white():
    """The shared decoder (``image_to_uint8``: training, evaluation, inference) converts too:
    a transparent upload is not turned black (its hidden RGB) when the model saw it white."""
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # transparent black: what many tools write
    rgba[1:3, 1:3] = (200, 10, 10, 255)
    pixels = image_to_uint8(Image.fromarray(rgba, "RGBA"), 4).numpy()
    assert pixels[:, 0, 0].tolist() == list(WHITE) and pixels[:, 1, 1].tolist() == [200, 10, 10]


def test_float_pixels_within_0_to_1_are_scaled_by_255_even_without_a_zero():
    """Within [0, 1] is a fraction whatever its minimum; [0, 255] otherwise stays as it is."""
    assert scale_to_uint8(np.array([[0.5, 1.0]], dtype=np.float32), "F").tolist() == [[128, 255]]
    assert scale_to_uint8(np.array([[0.5, 2.0]], dtype=np.float32), "F").tolist() == [[0, 2]]
