"""Edges of the inference handler (inference/inference.py) that the main tests leave open:
the artifact metadata it refuses, the documented default limits, each limit exactly at and one
over its boundary (payload bytes, aspect ratio, resized pixels), the request body types and
base64 forms it accepts (unpadded, URL-safe, MIME-wrapped, data URIs) or refuses (stray
characters), which request forms get a batched answer, the immutable records shared between
requests, the errors without AWS's toolkit, and the exact 400/413 messages for the rest (empty
sizes, unreadable headers, PIL's decompression-bomb warning, long values shortened)."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
import sys
import warnings
from array import array

import pytest
import torch
from PIL import Image
from torch import nn

from test_inference import _load_module, b64, encode, inference, make_image, png_bomb

BAD, TOO_LARGE = inference.BadRequestError, inference.PayloadTooLargeError
JSON = "application/json"
GOOD_META = {"classes": ["cat", "dog"], "image_size": 8,
             "normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    for var in (*inference.Limits.ENV.values(), inference.ENV_TOP_K):
        monkeypatch.delenv(var, raising=False)


def error_of(body, content_type=JSON) -> inference.InferenceError:
    with pytest.raises(inference.InferenceError) as info:
        inference.input_fn(body, content_type)
    return info.value


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def meta_with(**changes) -> dict:
    meta = json.loads(json.dumps(GOOD_META))
    for key, value in changes.items():
        if key in ("mean", "std"):
            meta["normalize"][key] = value
        else:
            meta[key] = value
    return meta


def pooled_model(image_size: int, classes=("cat", "dog")) -> inference.LoadedModel:
    """A tiny real model (average pool + linear) that takes any input size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(classes))).eval()
    return inference.LoadedModel(model, tuple(classes), image_size, (0.5, 0.5, 0.5),
                                 (0.25, 0.25, 0.25), torch.device("cpu"), {})


# ---------------------------------------------------------------------------- model metadata
@pytest.mark.parametrize("changes", [
    {"mean": [0.5, 0.4]}, {"mean": [0.5, 0.4, 0.3, 0.2]},
    {"std": [0.2, 0.25]}, {"std": [0.2, 0.25, 0.3, 0.1]},
    {"std": [0.2, 0.0, 0.3]}, {"std": [0.2, -0.5, 0.3]}, {"std": [-2.0, 0.25, 0.3]},
    {"image_size": 0}, {"image_size": -3},
], ids=str)
def test_metadata_needs_three_means_three_positive_stds_and_a_positive_image_size(changes):
    with pytest.raises(inference.ArtifactError, match="normalize needs 3 means and 3 positive stds"):
        inference._loaded_model(nn.Identity(), meta_with(**changes), torch.device("cpu"))


def test_the_smallest_valid_metadata_is_accepted_and_normalised():
    meta = meta_with(image_size="1", std=[1e-6, 1, "0.5"], classes=[3, "dog"])
    loaded = inference._loaded_model(nn.Identity(), meta, torch.device("cpu"))
    assert (loaded.image_size, loaded.std, loaded.classes) == (1, (1e-6, 1.0, 0.5), ("3", "dog"))
    assert loaded.mean == (0.5, 0.4, 0.3) and loaded.meta == meta


@pytest.mark.parametrize("meta", [
    {**GOOD_META, "normalize": {"mean": [0.5, 0.4, 0.3]}},  # KeyError
    meta_with(mean=5),  # TypeError: not a list
    meta_with(image_size=None),  # TypeError
    meta_with(image_size="big"),  # ValueError
    meta_with(std=["a", "b", "c"]),  # ValueError
], ids=["no std", "mean 5", "size None", "size big", "std text"])
def test_metadata_of_the_wrong_type_is_an_artifact_error(meta):
    with pytest.raises(inference.ArtifactError, match="model.json: bad image_size or normalize"):
        inference._loaded_model(nn.Identity(), meta, torch.device("cpu"))


def test_metadata_without_classes_is_refused():
    with pytest.raises(inference.ArtifactError, match="model.json: no classes"):
        inference._loaded_model(nn.Identity(), meta_with(classes=[]), torch.device("cpu"))


# ---------------------------------------------------------------------------- limits
def test_default_limits_and_top_k_are_the_documented_ones():
    assert dataclasses.asdict(inference.Limits.from_env({})) == {
        "max_payload_bytes": 6 * 1024 * 1024, "max_image_pixels": 40_000_000,
        "max_total_pixels": 100_000_000, "max_batch_size": 32, "max_aspect_ratio": 32,
        "max_resized_pixels": 16_000_000,
    }
    assert inference.top_k_from_env({}) == 5
    every = {var: str(7 + i) for i, var in enumerate(inference.Limits.ENV.values())}
    assert list(dataclasses.asdict(inference.Limits.from_env(every)).values()) == [7, 8, 9, 10, 11, 12]


def test_a_payload_exactly_at_the_byte_limit_is_accepted(monkeypatch):
    data = png(6, 5)
    body = json.dumps({"image": b64(data)})
    monkeypatch.setenv("IMGPIPE_MAX_PAYLOAD_BYTES", str(len(data)))
    assert inference.input_fn(data, "image/png").images[0].size == (6, 5)
    monkeypatch.setenv("IMGPIPE_MAX_PAYLOAD_BYTES", str(len(data) - 1))
    error = error_of(data, "image/png")
    assert (error.status_code, error.message) == (413, (
        f"payload of {len(data)} bytes exceeds the limit of {len(data) - 1} bytes "
        "(IMGPIPE_MAX_PAYLOAD_BYTES)"))
    monkeypatch.setenv("IMGPIPE_MAX_PAYLOAD_BYTES", str(len(body)))
    assert len(inference.input_fn(body, JSON).images) == 1
    monkeypatch.setenv("IMGPIPE_MAX_PAYLOAD_BYTES", str(len(body) - 1))
    assert error_of(body).status_code == 413


def test_a_memoryview_is_sized_in_bytes_not_items(monkeypatch):
    data = png(6, 5)
    assert inference.input_fn(memoryview(data), "image/png").images[0].size == (6, 5)
    assert inference.input_fn(bytearray(data), "image/png").images[0].size == (6, 5)
    words = memoryview(array("H", [0] * 600))  # 600 items, 1200 bytes
    monkeypatch.setenv("IMGPIPE_MAX_PAYLOAD_BYTES", "1000")
    error = error_of(words, "application/x-image")
    assert error.status_code == 413 and "payload of 1200 bytes" in error.message


def test_an_image_exactly_at_the_aspect_ratio_limit_is_accepted():
    for size in ((64, 2), (2, 64)):
        assert inference.input_fn(png(*size), "image/png").images[0].size == size
    for size in ((65, 2), (2, 65)):
        assert "IMGPIPE_MAX_ASPECT_RATIO" in error_of(png(*size), "image/png").message
    error = error_of(json.dumps([b64(png(4, 4)), b64(png(2, 66))]))
    assert (error.status_code, error.message) == (400, (
        "images[1]: 2x66 has an aspect ratio of 33:1, over the limit of 32:1 "
        "(IMGPIPE_MAX_ASPECT_RATIO); crop or pad the image closer to a square"))


@pytest.mark.parametrize("size", [(0, 5), (5, 0), (0, 0)])
def test_an_empty_declared_size_is_a_400(size):
    with pytest.raises(BAD, match=rf"^image: image declares an empty size {size[0]}x{size[1]}$"):
        inference.check_image_size(size, "image", inference.Limits())
    inference.check_image_size((1, 1), "image", inference.Limits())  # the smallest image is fine


# ---------------------------------------------------------------------------- resized pixels
def test_a_long_image_is_refused_by_the_size_it_would_grow_to(monkeypatch):
    model = pooled_model(100)  # 10x200 grows to 100x2000 = 200,000 pixels
    tall, wide = inference.input_fn(json.dumps([b64(png(10, 200)), b64(png(200, 10))]), JSON).images
    monkeypatch.setenv("IMGPIPE_MAX_RESIZED_PIXELS", "200000")
    both = inference.predict_fn(inference.InferenceRequest((tall, wide), True), model)
    assert both.probabilities.shape == (2, 2)
    monkeypatch.setenv("IMGPIPE_MAX_RESIZED_PIXELS", "199999")
    with pytest.raises(TOO_LARGE) as info:
        inference.predict_fn(inference.InferenceRequest((tall,), False), model)
    assert info.value.message == (
        "image: 10x200 would be resized to 100x2000 = 200000 pixels for this 100px model, "
        "over the limit of 199999 (IMGPIPE_MAX_RESIZED_PIXELS)")
    small = inference.input_fn(png(100, 100), "image/png").images[0]
    with pytest.raises(TOO_LARGE, match=r"^images\[1\]: 200x10 would be resized to 2000x100 = 200000 "):
        inference.predict_fn(inference.InferenceRequest((small, wide), True), model)


def test_a_one_image_batch_names_its_image_as_a_batch_item_in_every_message(monkeypatch):
    """``{"images": [x]}`` answers as a batch, so its messages say images[0], as the decoder's do."""
    model = pooled_model(100)
    body = json.dumps({"images": [b64(png(10, 200))]})
    monkeypatch.setenv("IMGPIPE_MAX_IMAGE_PIXELS", "1999")
    assert error_of(body).message.startswith("images[0]: ")
    monkeypatch.delenv("IMGPIPE_MAX_IMAGE_PIXELS")
    monkeypatch.setenv("IMGPIPE_MAX_RESIZED_PIXELS", "199999")
    with pytest.raises(TOO_LARGE, match=r"^images\[0\]: 10x200 would be resized to 100x2000 "):
        inference.predict_fn(inference.input_fn(body, JSON), model)


# ---------------------------------------------------------------------------- request bodies
def test_bodies_that_hold_nothing_are_named_for_what_they_are():
    assert error_of(None, "image/png").message.startswith("empty request body")
    assert error_of({}).message.startswith('JSON object has no "image" or "images" key (got keys: [])')
    assert error_of([]).message == "empty batch: send at least one base64 image"
    assert error_of("text", "image/png").message == (
        "image content types take the raw image bytes, not text")
    assert error_of({"image": "x"}, "image/png").message == (
        "image content types take raw bytes, got dict")


def test_the_keys_of_an_object_without_an_image_are_listed_ten_at_most():
    message = error_of(json.dumps({key: 1 for key in "kjihgfedcba"})).message
    assert "(got keys: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']); send " in message


@pytest.mark.parametrize("item, kind", [(["url"], "list"), ({"picture": "x"}, "dict"), (None, "NoneType")])
def test_a_batch_item_that_is_not_a_string_is_named(item, kind):
    assert error_of(json.dumps({"images": [item]})).message == (
        f"images[0]: expected a base64 string, got {kind}")


def test_long_values_are_shortened_in_messages():
    accepted = "application/x-image, image/jpeg, image/png, application/json"
    assert error_of(b"x", "text/csv").message == f"unsupported content type 'text/csv'; send one of: {accepted}"
    given = "x/" + "y" * 76  # its repr is exactly 80 characters: shown whole
    assert error_of(b"x", given).message == f"unsupported content type {given!r}; send one of: {accepted}"
    longer = given + "z"
    assert error_of(b"x", longer).message == (
        f"unsupported content type {repr(longer)[:77]}...; send one of: {accepted}")
    url = "https://example.com/" + "a" * 100
    assert error_of(json.dumps({"image": url})).message == (
        f"image: looks like a URL ({repr(url)[:57]}...); URLs are not fetched by this endpoint, "
        "send the image bytes base64-encoded")


@pytest.mark.parametrize("form, batched", [
    ({"image": "<b64>"}, False), ({"images": ["<b64>"]}, True), (["<b64>"], True)])
def test_only_a_batch_form_gets_a_list_of_answers(form, batched):
    body = json.dumps(form).replace('"<b64>"', json.dumps(b64(png(4, 4))))
    request = inference.input_fn(body, JSON)
    assert request.batched is batched and len(request.images) == 1
    answer = json.loads(inference.output_fn(inference.predict_fn(request, pooled_model(4)), None))
    ranked = answer[0] if batched else answer
    assert [r["label"] for r in ranked] in (["cat", "dog"], ["dog", "cat"])
    assert len(answer) == (1 if batched else 2)


def test_request_model_and_answer_records_are_immutable():
    request = inference.input_fn(png(4, 4), "image/png")
    model = pooled_model(4)
    prediction = inference.predict_fn(request, model)
    for record, field in ((inference.Limits(), "max_batch_size"), (model, "image_size"),
                          (request, "batched"), (prediction, "batched")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, 1)


# ---------------------------------------------------------------------------- base64 forms
def test_base64_padding_may_be_left_out():
    sizes = {}
    for seed in range(40):  # PNGs whose base64 needs one and two "=" of padding
        data = encode(make_image(seed, (4 + seed % 7, 3 + seed % 5)))
        sizes.setdefault(len(data) % 3, data)
    for data in (sizes[1], sizes[2]):
        text = b64(data)
        assert text.endswith("=")
        for unpadded in (text.rstrip("="), base64.urlsafe_b64encode(data).decode().rstrip("=")):
            [image] = inference.input_fn(json.dumps({"image": unpadded}), JSON).images
            assert image.tobytes() == Image.open(io.BytesIO(data)).tobytes()


@pytest.mark.parametrize("text", ["--8=", "__8=", "--8", "__8"])
def test_one_url_safe_character_is_enough_to_read_url_safe_base64(text):
    assert error_of(json.dumps({"image": text})).message.startswith(
        "image: not a decodable image (2 bytes; supported formats: ")


def test_base64_with_a_stray_character_is_refused_not_skipped():
    data = png(4, 4)
    wrapped = base64.encodebytes(data).decode()  # MIME style: a newline every 76 characters
    assert "\n" in wrapped.strip()
    assert inference.input_fn(json.dumps({"image": wrapped}), JSON).images[0].size == (4, 4)
    text = b64(data)
    for stray in ("*", ".", "!"):
        error = error_of(json.dumps({"image": text[:8] + stray + text[8:]}))
        assert error.status_code == 400 and error.message.startswith("image: not valid base64")


def test_url_safe_base64_is_as_strict_as_the_standard_alphabet():
    data = next(d for d in (encode(make_image(seed, (5, 4))) for seed in range(50))
                if set("-_") & set(base64.urlsafe_b64encode(d).decode()))
    text = base64.urlsafe_b64encode(data).decode().rstrip("=")
    wrapped = "\n".join(text[i:i + 16] for i in range(0, len(text), 16))  # line breaks are skipped
    [image] = inference.input_fn(json.dumps({"image": wrapped}), JSON).images
    assert image.tobytes() == Image.open(io.BytesIO(data)).tobytes()
    for stray in ("*", ".", "!", "+", "/"):  # in place of one character: the length stays valid
        error = error_of(json.dumps({"image": text[:8] + stray + text[9:]}))
        assert error.status_code == 400 and error.message.startswith("image: not valid base64"), stray


def test_base64_that_is_not_ascii_is_a_400():
    error = error_of(json.dumps({"image": "aGVsbG8\u00e9"}))
    assert error.status_code == 400 and error.message.startswith("image: not valid base64")


@pytest.mark.parametrize("uri, message", [
    ("data:image/png;base64", "image: data URI must be base64 (data:<type>;base64,<data>)"),
    ("data:image/png,AAAA", "image: data URI must be base64 (data:<type>;base64,<data>)"),
    ("data:image/png;base64,", "image: empty image string"),
])
def test_data_uris_without_base64_data_are_refused(uri, message):
    assert error_of(json.dumps({"image": uri})).message == message


# ---------------------------------------------------------------------------- image headers
def test_a_header_pil_cannot_read_is_a_400_not_a_crash():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "BMP")
    data = bytearray(buffer.getvalue())
    data[30:34] = struct.pack("<I", 9)  # compression method 9: PIL raises OSError while opening
    error = error_of(bytes(data), "image/png")
    assert (error.status_code, error.message) == (
        400, "image: could not read the image header (Unsupported BMP compression (9))")


def test_pils_decompression_bomb_warning_is_a_413(monkeypatch):
    monkeypatch.setenv("IMGPIPE_MAX_IMAGE_PIXELS", "200000000")
    monkeypatch.setenv("IMGPIPE_MAX_TOTAL_PIXELS", "200000000")
    bomb = png_bomb(10_000, 10_000)  # 100 M pixels: over PIL's warning threshold, under its error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        error = error_of(bomb, "image/png")
    assert error.status_code == 413 and error.message.startswith("image: refused as a decompression bomb")


# ---------------------------------------------------------------------------- errors, accept
def test_without_the_toolkit_the_errors_are_plain_exceptions(monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker_inference", None)  # imgpipe's own image: no toolkit
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", None)
    standalone = _load_module("imgpipe_inference_without_toolkit")
    monkeypatch.delitem(sys.modules, "imgpipe_inference_without_toolkit")
    assert standalone.InferenceError.__bases__ == (Exception,)
    error = standalone.PayloadTooLargeError("too big")
    assert (error.args, error.status_code, error.phrase) == (("too big",), 413, "Request Entity Too Large")
    with pytest.raises(standalone.BadRequestError, match="empty request body"):
        standalone.input_fn(b"", "image/png")


def test_an_unknown_status_gets_a_generic_reason_phrase():
    assert inference.InferenceError(599, "odd").phrase == "Error"
    assert inference.InferenceError(413, "big").phrase == "Request Entity Too Large"


def test_a_blank_accept_header_means_json():
    assert inference.accepts_json("   ") and inference.accepts_json(None)
    assert not inference.accepts_json("text/csv")
