"""Tests for inference/inference.py, the SageMaker inference handler.

A real artifact (MobileNetV2, 32 px, random weights, non-ImageNet normalisation) is saved
with ``imgclf.artifact.save_model`` and served through model_fn → input_fn → predict_fn →
output_fn with real PNG/JPEG bytes made by PIL. Predictions are checked against a direct
forward pass on images preprocessed by the training loader (``imgclf.data.load_uint8``).
"""
from __future__ import annotations

import base64
import http
import importlib.util
import inspect
import io
import json
import socket
import struct
import sys
import types
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from imgclf.artifact import ArtifactError, create_archive, save_model
from imgclf.data import load_uint8, normalize_batch
from imgclf.models import IMAGENET_MEAN, IMAGENET_STD, build_model

INFERENCE_PY = Path(__file__).resolve().parents[1] / "inference" / "inference.py"
CLASSES = [f"class_{c}" for c in "abcdefg"]  # 7 classes: more than the default top-5
SIZE = 32
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not ImageNet's: the artifact's must be used
LIMIT_VARS = (
    "IMGPIPE_MAX_PAYLOAD_BYTES",
    "IMGPIPE_MAX_IMAGE_PIXELS",
    "IMGPIPE_MAX_TOTAL_PIXELS",
    "IMGPIPE_MAX_BATCH_SIZE",
    "IMGPIPE_TOP_K",
)


def _load_module(name: str) -> types.ModuleType:
    """inference/inference.py as module ``name``. inference/ is a SageMaker source_dir, not a
    package; a private name keeps ``inference`` free for whatever else imports it."""
    spec = importlib.util.spec_from_file_location(name, INFERENCE_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


inference = _load_module("imgpipe_inference_under_test")
BAD, TOO_LARGE, UNSUPPORTED = (
    inference.BadRequestError, inference.PayloadTooLargeError, inference.UnsupportedMediaTypeError
)
JSON = "application/json"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    for var in LIMIT_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny forward passes are several times faster single-threaded on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _calibrated_model() -> torch.nn.Module:
    """A random-weight model whose outputs clearly depend on the input: batch-norm statistics
    are set from real activations (the defaults squash everything to one answer) and the
    head is scaled up so the probabilities spread."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", len(CLASSES), pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, SIZE, SIZE))
        model.classifier[1].weight.mul_(3)
    return model.eval()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = _calibrated_model()
    model_dir = tmp_path_factory.mktemp("model")
    meta = {"arch": "mobilenet_v2", "classes": CLASSES, "image_size": SIZE,
            "normalize": {"mean": list(MEAN), "std": list(STD)}}
    save_model(model_dir, model, meta)
    return model_dir, model


@pytest.fixture(scope="module")
def loaded(artifact):
    return inference.model_fn(str(artifact[0]))


def make_image(seed: int, size: tuple[int, int] = (45, 30), mode: str = "RGB") -> Image.Image:
    """A random, non-square image (so resize and centre crop both matter)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, a few KB in size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def probabilities(body: Any, content_type: str, loaded) -> torch.Tensor:
    return inference.predict_fn(inference.input_fn(body, content_type), loaded).probabilities


def answer(body: Any, content_type: str, loaded, accept: str = "application/json") -> Any:
    prediction = inference.predict_fn(inference.input_fn(body, content_type), loaded)
    return json.loads(inference.output_fn(prediction, accept))


def expect_error(cls: type, status: int, body: Any, content_type: Any, *fragments: str):
    """input_fn raises ``cls`` with ``status`` and a message holding every fragment."""
    with pytest.raises(cls) as info:
        inference.input_fn(body, content_type)
    assert info.value.status_code == status
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert inference.error_body(info.value) == {"error": str(info.value), "status": status}
    return info.value


# ---------------------------------------------------------------------------- model_fn
def test_handler_signatures_match_the_toolkit():
    # The toolkit counts parameters: one more and it passes its request context there.
    arity = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2}
    for name, count in arity.items():
        assert len(inspect.signature(getattr(inference, name)).parameters) == count, name
    assert not hasattr(inference, "transform_fn")  # would conflict with input/predict/output_fn


def test_model_fn_loads_model_and_metadata(loaded):
    assert loaded.classes == tuple(CLASSES)
    assert loaded.image_size == SIZE and loaded.mean == MEAN and loaded.std == STD
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not loaded.model.training


def test_model_fn_without_model_json_names_the_missing_file(tmp_path, artifact):
    (tmp_path / "model.pth").write_bytes((artifact[0] / "model.pth").read_bytes())
    with pytest.raises(ArtifactError, match=r"model\.json not found.*found \['model\.pth'\]"):
        inference.model_fn(str(tmp_path))


def test_model_fn_accepts_a_directory_holding_model_tar_gz(tmp_path, artifact, loaded):
    create_archive(artifact[0], tmp_path / "model.tar.gz")
    from_archive = inference.model_fn(str(tmp_path))
    body = encode(make_image(1))
    expected = probabilities(body, "image/png", loaded)
    assert torch.equal(probabilities(body, "image/png", from_archive), expected)


def test_misconfigured_limit_fails_at_model_load(monkeypatch, artifact):
    monkeypatch.setenv("IMGPIPE_MAX_BATCH_SIZE", "lots")
    with pytest.raises(ValueError, match="IMGPIPE_MAX_BATCH_SIZE"):
        inference.model_fn(str(artifact[0]))


# ---------------------------------------------------------------------------- happy paths
def test_every_content_type_gives_identical_probabilities(loaded):
    png = encode(make_image(2))
    reference = probabilities(png, "application/x-image", loaded)
    variants = {
        "image/png": (png, "image/png"),
        "parameters": (png, "Image/PNG; charset=utf-8"),
        "json image": (json.dumps({"image": b64(png)}).encode(), JSON),
        "json str body": (json.dumps({"image": b64(png)}), "application/json; charset=utf-8"),
        "json pre-parsed": ({"image": b64(png)}, JSON),
        "json list": (json.dumps([b64(png)]).encode(), JSON),
        "json images": (json.dumps({"images": [b64(png)]}).encode(), JSON),
        "data uri": (json.dumps({"image": "data:image/png;base64," + b64(png)}), JSON),
        "urlsafe b64": (json.dumps({"image": base64.urlsafe_b64encode(png).decode()}), JSON),
    }
    for name, (body, content_type) in variants.items():
        assert torch.equal(probabilities(body, content_type, loaded), reference), name
    jpeg = encode(make_image(2), "JPEG")
    jpeg_reference = probabilities(jpeg, "application/x-image", loaded)
    assert torch.equal(probabilities(jpeg, "image/jpeg", loaded), jpeg_reference)
    assert not torch.equal(probabilities(encode(make_image(3)), "image/png", loaded), reference)


def test_predictions_equal_a_forward_pass_on_training_preprocessing(tmp_path, artifact, loaded):
    images = [make_image(4), make_image(5, (20, 50), "L"), make_image(6, (64, 40), "P")]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90°; whatever training does with it, so must we
    paths.append(tmp_path / "rotated.jpg")
    make_image(20, (60, 24)).save(paths[-1], "JPEG", exif=exif.tobytes())
    body = json.dumps({"images": [b64(p.read_bytes()) for p in paths]})
    got = probabilities(body, "application/json", loaded)

    model = artifact[1]
    uint8 = torch.stack([load_uint8(str(p), SIZE) for p in paths])  # the training loader
    with torch.inference_mode():
        expected = torch.softmax(model(normalize_batch(uint8, MEAN, STD)), dim=1)
        imagenet = torch.softmax(model(normalize_batch(uint8, IMAGENET_MEAN, IMAGENET_STD)), dim=1)
    tolerance = 1e-6 if loaded.device.type == "cpu" else 5e-3  # CUDA convolutions may use TF32
    assert got.shape == (4, len(CLASSES))
    assert torch.allclose(got, expected, atol=tolerance)
    assert (got - imagenet).abs().max() > 0.1  # the comparison can tell normalisations apart


def test_batch_of_three_returns_three_answers_in_order(loaded):
    pngs = [encode(make_image(seed)) for seed in (7, 8, 9)]
    batch = answer(json.dumps({"images": [b64(p) for p in pngs]}), "application/json", loaded)
    assert len(batch) == 3
    for png, result in zip(pngs, batch):  # batched kernels differ from single ones in the last bits
        single = answer(png, "image/png", loaded)
        assert [r["index"] for r in result] == [r["index"] for r in single]
        expected = pytest.approx([r["probability"] for r in single], abs=1e-4)
        assert [r["probability"] for r in result] == expected
    assert batch[0] != batch[1]


def test_top_k_is_sorted_labelled_and_sized(monkeypatch, loaded):
    png = encode(make_image(10))
    result = answer(png, "image/png", loaded)
    assert len(result) == 5
    probs = [r["probability"] for r in result]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert all(r["label"] == CLASSES[r["index"]] for r in result)
    full = probabilities(png, "image/png", loaded)[0]
    assert result[0]["index"] == int(full.argmax())
    assert result[0]["probability"] == pytest.approx(float(full.max()))

    monkeypatch.setenv("IMGPIPE_TOP_K", "2")
    assert len(answer(png, "image/png", loaded)) == 2
    monkeypatch.setenv("IMGPIPE_TOP_K", "50")
    everything = answer(png, "image/png", loaded)
    assert len(everything) == len(CLASSES)
    assert sum(r["probability"] for r in everything) == pytest.approx(1.0, abs=1e-5)


def test_concurrent_requests_match_sequential_ones(loaded):
    bodies = [encode(make_image(seed, (30 + seed, 40))) for seed in range(8)]
    sequential = [answer(body, "image/png", loaded) for body in bodies]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda body: answer(body, "image/png", loaded), bodies))
    assert concurrent == sequential


# ---------------------------------------------------------------------------- bad input
def test_empty_body_is_400():
    expect_error(BAD, 400, b"", "image/png", "empty request body")
    expect_error(BAD, 400, "", JSON, "empty request body")
    expect_error(BAD, 400, json.dumps({"image": ""}), JSON, "image: empty image string")


def test_random_bytes_are_400_naming_the_formats():
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    expect_error(BAD, 400, noise, "application/x-image", "image: not a decodable", "JPEG, PNG")


def test_formats_outside_the_allowed_list_are_400():
    # PIL reads PPM (and EPS via Ghostscript, ...); the handler only lets its listed decoders try.
    ppm = encode(make_image(19), "PPM")
    with Image.open(io.BytesIO(ppm)) as image:
        assert image.format == "PPM"
    expect_error(BAD, 400, ppm, "application/x-image", "not a decodable image")


def test_truncated_png_is_400_naming_the_batch_item():
    good, bad = encode(make_image(11)), encode(make_image(12))[:-300]
    expect_error(BAD, 400, bad, "image/png", "image: could not decode the PNG image")
    body = json.dumps([b64(good), b64(bad), b64(good)])
    expect_error(BAD, 400, body, JSON, "images[1]: could not decode")


@pytest.mark.parametrize(
    "content_type", ["text/csv", "image/gif", "application/octet-stream", "", None]
)
def test_unsupported_content_type_is_415_listing_accepted_ones(content_type):
    accepted = inference.ACCEPTED_CONTENT_TYPES
    assert set(accepted) == {"application/x-image", "image/jpeg", "image/png", JSON}
    body = encode(make_image(13))
    expect_error(UNSUPPORTED, 415, body, content_type, "unsupported content type", *accepted)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"image": ', "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        ("[" * 100_000, "malformed JSON"),  # recursion, not a crash
        (json.dumps({"picture": "abc"}), 'no "image" or "images" key'),
        (json.dumps(42), "JSON body is a int"),
        (json.dumps([]), "empty batch"),
        (json.dumps({"images": "abc"}), '"images" must be a list'),
        (json.dumps([1, 2]), "images[0]: expected a base64 string"),
        (json.dumps({"image": "not base64!"}), "image: not valid base64"),
        (json.dumps({"image": "aGVsbG8=", "images": []}), 'both "image" and "images"'),
        (json.dumps({"image": "data:image/png,abc"}), "data URI must be base64"),
    ],
)
def test_malformed_json_requests_are_400(body, fragment):
    expect_error(BAD, 400, body, JSON, fragment)


@pytest.fixture
def network_calls(monkeypatch) -> list:
    """Fails (and records) any attempt to resolve or connect."""
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


@pytest.mark.parametrize(
    "payload",
    [
        {"url": "http://127.0.0.1:9/cat.png"},
        {"image_url": "https://example.com/cat.jpg"},
        {"image": "https://example.com/cat.jpg"},
        {"images": ["s3://bucket/cat.jpg"]},
        {"images": [{"url": "http://example.com/cat.jpg"}]},
    ],
)
def test_urls_are_refused_without_any_network_call(payload, network_calls):
    expect_error(BAD, 400, json.dumps(payload), JSON, "URLs are not fetched")
    assert network_calls == []


def test_oversized_payload_is_413_before_decoding(monkeypatch):
    default_limit = 6 * 1024 * 1024
    expect_error(TOO_LARGE, 413, b"\0" * (default_limit + 1), "application/x-image",
                 f"exceeds the limit of {default_limit} bytes")
    monkeypatch.setenv("IMGPIPE_MAX_PAYLOAD_BYTES", "1000")
    png = encode(make_image(14, (100, 100)))
    assert len(png) > 1000
    expect_error(TOO_LARGE, 413, png, "image/png", "IMGPIPE_MAX_PAYLOAD_BYTES")
    expect_error(TOO_LARGE, 413, json.dumps({"image": b64(png)}), JSON, "limit of 1000 bytes")


def test_decompression_bombs_are_413_without_decoding(monkeypatch):
    small = png_bomb(300, 200)
    with Image.open(io.BytesIO(small)) as image:  # the crafted file is a real, decodable PNG
        assert image.size == (300, 200) and image.convert("L").getextrema() == (0, 0)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    huge = png_bomb(20_000, 20_000)  # 400 M pixels in ~60 KB: over PIL's own hard limit too
    assert len(huge) < 200_000
    expect_error(TOO_LARGE, 413, huge, "image/png", "image: refused as a decompression bomb")
    # 64 M pixels: under PIL's error threshold (~179 M), so only the handler's own check stops it
    medium = png_bomb(8_000, 8_000)
    expect_error(TOO_LARGE, 413, medium, "application/x-image",
                 "8000x8000 = 64000000 pixels exceeds the limit of 40000000")
    body = json.dumps({"images": [b64(small), b64(medium)]})
    expect_error(TOO_LARGE, 413, body, JSON, "images[1]: 8000x8000")


def test_pixel_limits_follow_the_environment(monkeypatch):
    png = encode(make_image(15, (45, 30)))  # 1350 pixels
    monkeypatch.setenv("IMGPIPE_MAX_IMAGE_PIXELS", "1000")
    expect_error(TOO_LARGE, 413, png, "image/png", "IMGPIPE_MAX_IMAGE_PIXELS")
    monkeypatch.delenv("IMGPIPE_MAX_IMAGE_PIXELS")
    monkeypatch.setenv("IMGPIPE_MAX_TOTAL_PIXELS", "3000")
    inference.input_fn(json.dumps([b64(png)] * 2), "application/json")  # 2700 pixels: fine
    expect_error(TOO_LARGE, 413, json.dumps([b64(png)] * 3), JSON,
                 "4050 pixels in all", "IMGPIPE_MAX_TOTAL_PIXELS")


def test_batch_too_large_is_413(monkeypatch):
    item = b64(encode(make_image(16, (8, 8))))
    expect_error(TOO_LARGE, 413, json.dumps([item] * 33), JSON,
                 "batch of 33 images exceeds the limit of 32")
    assert len(inference.input_fn(json.dumps([item] * 32), "application/json").images) == 32
    monkeypatch.setenv("IMGPIPE_MAX_BATCH_SIZE", "2")
    expect_error(TOO_LARGE, 413, json.dumps({"images": [item] * 3}), JSON,
                 "batch of 3 images", "IMGPIPE_MAX_BATCH_SIZE")


# ---------------------------------------------------------------------------- output_fn
@pytest.mark.parametrize(
    "accept", ["application/json", "*/*", "", None, "application/json; charset=utf-8",
               "text/html, application/json;q=0.9", "application/*"]
)
def test_json_compatible_accept_types_are_answered(accept, loaded):
    result = answer(encode(make_image(17)), "image/png", loaded, accept=accept)
    assert len(result) == 5 and set(result[0]) == {"label", "index", "probability"}


@pytest.mark.parametrize("accept", ["text/csv", "application/x-npy", "image/png"])
def test_other_accept_types_are_415(accept, loaded):
    request = inference.input_fn(encode(make_image(18)), "image/png")
    prediction = inference.predict_fn(request, loaded)
    with pytest.raises(inference.UnsupportedMediaTypeError) as info:
        inference.output_fn(prediction, accept)
    assert info.value.status_code == 415
    assert accept in str(info.value) and "application/json" in str(info.value)


# ---------------------------------------------------------------------------- errors
def test_error_hierarchy_and_error_body():
    try:  # AWS's inference toolkit is installed by `make test` (its container tests), not in production
        from sagemaker_inference.errors import GenericInferenceToolkitError as toolkit_error
    except ImportError:
        toolkit_error = Exception
    assert inference.InferenceError.__bases__ == (toolkit_error,)
    for cls, status in ((inference.BadRequestError, 400), (inference.PayloadTooLargeError, 413),
                        (inference.UnsupportedMediaTypeError, 415)):
        exc = cls("the problem")
        assert isinstance(exc, inference.InferenceError) and exc.status_code == status
        assert str(exc) == exc.message == "the problem"
        assert inference.error_body(exc) == {"error": "the problem", "status": status}
    internal = inference.error_body(RuntimeError("/secret/path"))
    assert internal == {"error": "internal error (RuntimeError)", "status": 500}


def test_errors_subclass_the_toolkit_error_when_it_is_importable(monkeypatch):
    class GenericInferenceToolkitError(Exception):  # the toolkit's constructor signature
        def __init__(self, status_code, message=None, phrase=None):
            self.status_code, self.message, self.phrase = status_code, message, phrase or message
            super().__init__(status_code, message, phrase)

    errors = types.ModuleType("sagemaker_inference.errors")
    errors.GenericInferenceToolkitError = GenericInferenceToolkitError
    package = types.ModuleType("sagemaker_inference")
    package.errors = errors
    monkeypatch.setitem(sys.modules, "sagemaker_inference", package)
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", errors)
    in_container = _load_module("imgpipe_inference_in_container")
    monkeypatch.delitem(sys.modules, "imgpipe_inference_in_container")

    with pytest.raises(GenericInferenceToolkitError) as info:
        in_container.input_fn(b"", "image/png")
    assert info.value.status_code == 400 and "empty request body" in info.value.message
    too_large = in_container.PayloadTooLargeError("too big")
    assert isinstance(too_large, GenericInferenceToolkitError)
    assert (too_large.status_code, too_large.message, str(too_large)) == (413, "too big", "too big")
    assert too_large.phrase == http.HTTPStatus(413).phrase  # the HTTP reason, never user text
