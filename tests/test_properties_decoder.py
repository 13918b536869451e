"""Property-based tests (hypothesis) of the inference decoder on generated images of every
PIL mode and many sizes and formats: each is accepted, keeps its size, and becomes the same
``[3, S, S]`` uint8 pixels that training's decoder gives for the same file, and the same that
training saw of it after PrepareData converted it (transparency included)."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclf.data import image_to_uint8
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("imgpipe_inference_properties", REPO / "inference" / "inference.py")
inference = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = inference
_spec.loader.exec_module(inference)
preprocess = load_script("imgpipe_steps_preprocess", "steps/preprocess.py")

FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
# PIL modes and the formats that can store each of them
FORMATS = {
    "1": ["PNG", "BMP", "TIFF", "GIF"], "L": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"],
    "LA": ["PNG", "TIFF"], "P": ["PNG", "BMP", "GIF", "TIFF"], "RGB": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"], "CMYK": ["JPEG", "TIFF"], "I;16": ["PNG", "TIFF"], "I": ["TIFF"],
    "F": ["TIFF"], "YCbCr": ["JPEG"],
}
SIDE = 16
MAX_ASPECT = inference.Limits().max_aspect_ratio  # the default aspect-ratio limit


def make(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        return rgb.quantize(8)
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, (height, width)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        image = Image.fromarray(values)  # the dtype picks the mode
        assert image.mode == mode
        return image
    return rgb.convert(mode)


@st.composite
def encoded_images(draw):
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    width = draw(st.integers(1, 48))  # within the aspect-ratio limit (longer side <= 32 x shorter)
    height = draw(st.integers(max(1, -(-width // MAX_ASPECT)), min(48, width * MAX_ASPECT)))
    buffer = io.BytesIO()
    make(mode, width, height, draw(st.integers(0, 2**16))).save(buffer, format=fmt)
    return mode, fmt, (width, height), buffer.getvalue()


@FAST
@given(case=encoded_images())
def test_every_mode_and_size_decodes_to_the_training_pixels(case):
    mode, fmt, size, data = case
    request = inference.input_fn(data, "application/x-image")
    [image] = request.images
    assert image.size == size and not request.batched
    pixels = image_to_uint8(image, SIDE)
    assert pixels.shape == (3, SIDE, SIDE) and str(pixels.dtype) == "torch.uint8"
    with Image.open(io.BytesIO(data)) as reference:  # what training does with the same file
        assert np.array_equal(pixels.numpy(), image_to_uint8(reference, SIDE).numpy()), (mode, fmt)


@FAST
@given(cases=st.lists(encoded_images(), min_size=1, max_size=4))
def test_a_json_batch_keeps_order_and_sizes(cases):
    body = json.dumps({"images": [base64.b64encode(data).decode() for *_, data in cases]})
    request = inference.input_fn(body, "application/json")
    assert request.batched and [im.size for im in request.images] == [size for _, _, size, _ in cases]


@FAST
@given(short=st.integers(1, 3), ratio=st.integers(MAX_ASPECT + 1, 200), tall=st.booleans())
def test_an_image_over_the_aspect_ratio_limit_is_refused_naming_it(short, ratio, tall):
    size = (short, short * ratio) if tall else (short * ratio, short)
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")
    with pytest.raises(inference.BadRequestError, match="IMGPIPE_MAX_ASPECT_RATIO"):
        inference.input_fn(buffer.getvalue(), "image/png")


@FAST
@given(colour=st.tuples(*[st.integers(0, 255)] * 3), width=st.integers(2, 40), height=st.integers(2, 40))
def test_a_solid_colour_stays_that_colour(colour, width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    [image] = inference.input_fn(buffer.getvalue(), "image/png").images
    pixels = image_to_uint8(image, SIDE).numpy()
    assert (np.abs(pixels.astype(int) - np.array(colour)[:, None, None]) <= 1).all()


# ---------------------------------------------------------------------------- train/serve skew
# Lossless formats only: preprocessing re-encodes a lossy source (JPEG quality 95), so its
# training copy differs from the upload by the re-encoding however both are converted.
LOSSLESS = {mode: [f for f in formats if f not in ("JPEG", "WEBP")] for mode, formats in FORMATS.items()}
KEYED = {"L": ["PNG"], "RGB": ["PNG"], "I;16": ["PNG"], "P": ["PNG", "GIF"]}  # a tRNS colour key


def with_alpha(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """RGBA or LA pixels with alpha anywhere in 0..255 (fully transparent included)."""
    rng = np.random.default_rng(seed)
    channels = {"RGBA": 4, "LA": 2}[mode]
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


@st.composite
def lossless_uploads(draw):
    """An image file as a client might upload it, in a format preprocessing keeps lossless,
    often with transparency: random alpha, or a colour key that some pixels match."""
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    buffer = io.BytesIO()
    kind = draw(st.sampled_from(["plain", "alpha", "keyed"]))
    if kind == "alpha":
        mode = draw(st.sampled_from(["RGBA", "LA"]))
        fmt = draw(st.sampled_from(LOSSLESS[mode]))
        with_alpha(mode, width, height, seed).save(buffer, format=fmt)
    elif kind == "keyed":
        mode = draw(st.sampled_from(sorted(KEYED)))
        fmt = draw(st.sampled_from(KEYED[mode]))
        image = make(mode, width, height, seed)
        key = image.getpixel((0, 0))  # at least one pixel is transparent
        image.save(buffer, format=fmt, transparency=key)
    else:
        mode = draw(st.sampled_from(sorted(m for m in LOSSLESS if LOSSLESS[m])))
        fmt = draw(st.sampled_from(LOSSLESS[mode]))
        make(mode, width, height, seed).save(buffer, format=fmt)
    return f"{kind} {mode} {fmt}", fmt, buffer.getvalue()


@FAST
@given(case=lossless_uploads())
def test_a_served_image_is_seen_as_its_preprocessed_training_copy(case):
    """The model must see an upload as it saw the same file in training, where PrepareData had
    converted it (alpha on white, 16-bit scaled) and written it as PNG."""
    label, fmt, data = case
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / f"upload.{fmt.lower()}"
        source.write_bytes(data)
        staged = preprocess.process_file(preprocess.Task(0, str(source), str(Path(scratch) / "staged"), 0, 10**8))
        assert staged["ok"], staged
        with Image.open(staged["staged"]) as training_copy:
            trained = image_to_uint8(training_copy, SIDE).numpy()
    [served] = inference.input_fn(data, "application/x-image").images
    assert np.array_equal(image_to_uint8(served, SIDE).numpy(), trained), label
