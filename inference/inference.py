"""SageMaker inference handler for imgpipe image classifiers.

Runs inside SageMaker's PyTorch inference container (sagemaker-inference toolkit) with
``imgclf`` shipped beside it, and in the project's local server. It imports only the
standard library, torch, PIL and ``imgclf``.

Contract (docs/architecture.md "Inference contract", docs/contracts.md):

- ``model_fn(model_dir)`` loads the artifact (``model.pth`` state_dict read with
  ``weights_only=True`` + ``model.json``; a directory holding only ``model.tar.gz`` is
  extracted first) onto the GPU when there is one, and returns a :class:`LoadedModel`.
- ``input_fn(body, content_type)`` accepts ``application/x-image``, ``image/jpeg``,
  ``image/png`` (raw bytes) and ``application/json``: ``{"image": "<base64>"}`` (one image),
  ``{"images": ["<base64>", ...]}`` or ``["<base64>", ...]`` (a batch). Base64 may carry a
  ``data:<type>;base64,`` prefix. Content-type parameters (``; charset=utf-8``) are ignored.
  URLs are never fetched. Images are fully decoded here (JPEG, PNG, BMP, GIF, TIFF, WebP;
  first frame) so that every bad input is refused before the model runs.
- ``predict_fn(data, model)`` turns each decoded image into RGB pixels with
  ``imgclf.data.image_to_uint8`` (EXIF orientation, RGB conversion, resize, centre crop:
  whatever training and evaluation do, on the same kind of opened PIL image), normalises
  with ``imgclf.data.normalize_batch`` and the artifact's mean/std, runs one batched
  forward pass under ``torch.inference_mode()`` and returns softmax probabilities.
- ``output_fn(prediction, accept)`` returns a JSON string: one image →
  ``[{"label", "index", "probability"}, ...]`` (top-k, best first, k = min(IMGPIPE_TOP_K=5,
  classes)); a batch → a list of such lists, in request order.

Errors are :class:`InferenceError` subclasses carrying ``status_code`` and a message naming
the problem: 400 (:class:`BadRequestError`: empty, undecodable, malformed, URL),
413 (:class:`PayloadTooLargeError`: payload, batch, or pixel limits) and 415
(:class:`UnsupportedMediaTypeError`: content type or accept). Inside AWS's container they
subclass ``sagemaker_inference.errors.GenericInferenceToolkitError`` so the toolkit answers
with that status. :func:`error_body` gives the JSON error body for a server.

Limits (environment, read per request so they can be tuned without a rebuild):
``IMGPIPE_MAX_PAYLOAD_BYTES`` (6 MiB, SageMaker's real-time payload limit),
``IMGPIPE_MAX_IMAGE_PIXELS`` (40,000,000 per image), ``IMGPIPE_MAX_TOTAL_PIXELS``
(100,000,000 per request), ``IMGPIPE_MAX_BATCH_SIZE`` (32), ``IMGPIPE_MAX_ASPECT_RATIO``
(32: longer side over shorter side, else 400) and ``IMGPIPE_MAX_RESIZED_PIXELS``
(16,000,000: the size an image grows to when its shorter side is scaled to the model's input
size, else 413; checked by ``predict_fn``, which knows that size). Pixel counts and aspect
ratio are checked from the image header before anything is decoded (decompression bombs, and
a few-byte 1000000x1 PNG that would otherwise be upscaled to billions of pixels). PIL's own
global bomb check (about 179 M pixels) also answers 413.

Handler functions keep exactly the toolkit's parameter counts: the toolkit counts a
handler's parameters and would pass its request context as an extra argument otherwise.
No state is shared between requests, so concurrent requests are safe.
"""
from __future__ import annotations

import base64
import binascii
import http
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from imgclf.artifact import META_FILE, ArtifactError, extract_archive, load_model
from imgclf.container import positive_int_from_env
from imgclf.data import image_to_uint8, normalize_batch, resized_size

try:  # present in AWS's inference containers (and in the test environment), not in imgpipe's
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ErrorBase
except ImportError:  # pragma: no cover - depends on the container
    _ErrorBase = Exception  # type: ignore[assignment,misc]

JSON_CONTENT_TYPE = "application/json"
IMAGE_CONTENT_TYPES = ("application/x-image", "image/jpeg", "image/png")
ACCEPTED_CONTENT_TYPES = IMAGE_CONTENT_TYPES + (JSON_CONTENT_TYPE,)
ACCEPTED_ACCEPT_TYPES = (JSON_CONTENT_TYPE, "application/*", "*/*")
ARCHIVE_FILE = "model.tar.gz"

Image.init()
#: PIL decoders an image may use; never every plugin PIL has (EPS would run Ghostscript).
IMAGE_FORMATS = tuple(f for f in ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP") if f in Image.OPEN)
URL_PREFIXES = ("http://", "https://", "s3://", "ftp://", "file://", "gs://")
URL_KEYS = ("url", "urls", "image_url", "image_uri", "uri", "s3_uri")

DEFAULT_TOP_K = 5
ENV_TOP_K = "IMGPIPE_TOP_K"


# ---------------------------------------------------------------------------- errors
class InferenceError(_ErrorBase):
    """A request the handler refuses: ``status_code`` (4xx) and a message naming the problem."""

    def __init__(self, status_code: int, message: str):
        if _ErrorBase is Exception:
            Exception.__init__(self, message)
        else:  # GenericInferenceToolkitError(status_code, message, phrase)
            _ErrorBase.__init__(self, status_code, message, _reason_phrase(status_code))
        self.status_code = status_code
        self.message = message
        self.phrase = _reason_phrase(status_code)  # HTTP reason phrase (no user input in it)

    def __str__(self) -> str:
        return self.message


class BadRequestError(InferenceError):
    """400: empty, malformed or undecodable input, or a URL instead of image bytes."""

    def __init__(self, message: str):
        super().__init__(400, message)


class PayloadTooLargeError(InferenceError):
    """413: payload, batch or pixel count over the configured limits."""

    def __init__(self, message: str):
        super().__init__(413, message)


class UnsupportedMediaTypeError(InferenceError):
    """415: a content type or accept type this handler does not speak."""

    def __init__(self, message: str):
        super().__init__(415, message)


def _reason_phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{"error": message, "status": code}`` for a JSON error response; 500 for other errors
    (their text is not echoed: it may hold internals)."""
    if isinstance(exc, InferenceError):
        return {"error": exc.message, "status": exc.status_code}
    return {"error": f"internal error ({type(exc).__name__})", "status": 500}


# ---------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """Request limits; :meth:`from_env` reads the ``IMGPIPE_MAX_*`` variables."""

    max_payload_bytes: int = 6 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_total_pixels: int = 100_000_000
    max_batch_size: int = 32
    max_aspect_ratio: int = 32
    max_resized_pixels: int = 16_000_000

    ENV = {
        "max_payload_bytes": "IMGPIPE_MAX_PAYLOAD_BYTES",
        "max_image_pixels": "IMGPIPE_MAX_IMAGE_PIXELS",
        "max_total_pixels": "IMGPIPE_MAX_TOTAL_PIXELS",
        "max_batch_size": "IMGPIPE_MAX_BATCH_SIZE",
        "max_aspect_ratio": "IMGPIPE_MAX_ASPECT_RATIO",
        "max_resized_pixels": "IMGPIPE_MAX_RESIZED_PIXELS",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Limits":
        defaults = cls()
        return cls(
            **{
                field: positive_int_from_env(environ, var, getattr(defaults, field))
                for field, var in cls.ENV.items()
            }
        )


def top_k_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """``IMGPIPE_TOP_K`` (default 5): how many classes each answer lists at most."""
    return positive_int_from_env(environ, ENV_TOP_K, DEFAULT_TOP_K)


# ---------------------------------------------------------------------------- model_fn
@dataclass(frozen=True)
class LoadedModel:
    """What ``model_fn`` returns: the model in eval mode and the metadata inference needs."""

    model: nn.Module
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    meta: Mapping[str, Any]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_fn(model_dir: str) -> LoadedModel:
    """Load the artifact in ``model_dir`` (``model.pth`` + ``model.json``, or ``model.tar.gz``)."""
    Limits.from_env()  # a misconfigured limit fails at startup, not on the first request
    top_k_from_env()
    device = default_device()
    directory = Path(model_dir)
    try:
        if not (directory / META_FILE).is_file() and (directory / ARCHIVE_FILE).is_file():
            with tempfile.TemporaryDirectory(prefix="imgpipe-model-") as tmp:
                model, meta = load_model(extract_archive(directory / ARCHIVE_FILE, tmp), device)
        else:
            model, meta = load_model(directory, device)
        return _loaded_model(model, meta, device)
    except ArtifactError as exc:
        held = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "no directory"
        raise ArtifactError(
            f"cannot load the model from {model_dir}: {exc} (expected model.pth and model.json, "
            f"or model.tar.gz holding them; found {held})"
        ) from exc


def _loaded_model(model: nn.Module, meta: Mapping[str, Any], device: torch.device) -> LoadedModel:
    """Validate the metadata inference relies on and bundle it with the model."""
    classes = tuple(str(c) for c in meta["classes"])
    norm = meta["normalize"]
    try:
        mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
        image_size = int(meta["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{META_FILE}: bad image_size or normalize ({exc})") from exc
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std) or image_size < 1:
        raise ArtifactError(
            f"{META_FILE}: normalize needs 3 means and 3 positive stds, and image_size >= 1"
        )
    if not classes:
        raise ArtifactError(f"{META_FILE}: no classes")
    return LoadedModel(model, classes, image_size, mean, std, device, dict(meta))  # type: ignore


# ---------------------------------------------------------------------------- input_fn
@dataclass(frozen=True)
class InferenceRequest:
    """Decoded images of one request, as opened by PIL (mode, EXIF and format-specific tags
    intact, as ``Image.open`` gives them to training); ``batched`` shapes the answer."""

    images: tuple[Image.Image, ...]
    batched: bool


Body = Union[bytes, bytearray, memoryview, str, dict, list, None]


def input_fn(request_body: Body, request_content_type: Optional[str]) -> InferenceRequest:
    """Validate and decode a request into PIL images (see the module docstring)."""
    limits = Limits.from_env()
    media_type = parse_media_type(request_content_type)
    if media_type not in ACCEPTED_CONTENT_TYPES:
        given = _show(request_content_type) if request_content_type else "(none given)"
        raise UnsupportedMediaTypeError(
            f"unsupported content type {given}; send one of: {', '.join(ACCEPTED_CONTENT_TYPES)}"
        )
    if _is_empty(request_body):
        raise BadRequestError("empty request body: send image bytes or JSON with base64 images")
    if media_type == JSON_CONTENT_TYPE:
        payloads, batched = _json_payloads(request_body, limits)
    else:
        payloads, batched = [_as_bytes(request_body, limits)], False
    return InferenceRequest(_decode_all(payloads, batched, limits), batched)


def _is_empty(body: Body) -> bool:
    return body is None or (not isinstance(body, (dict, list)) and len(body) == 0)


def parse_media_type(content_type: Optional[str]) -> str:
    """``"Application/JSON; charset=utf-8"`` → ``"application/json"``; ``None`` → ``""``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _show(value: Any, limit: int = 80) -> str:
    """A user-supplied value, quoted and shortened, safe to put in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_bytes(body: Body, limits: Limits) -> bytes:
    """Raw image bytes of an image-typed request, size-checked."""
    if isinstance(body, str):
        raise BadRequestError("image content types take the raw image bytes, not text")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise BadRequestError(f"image content types take raw bytes, got {type(body).__name__}")
    _check_payload_size(body.nbytes if isinstance(body, memoryview) else len(body), limits)
    return bytes(body)


def _check_payload_size(size: int, limits: Limits) -> None:
    if size > limits.max_payload_bytes:
        raise PayloadTooLargeError(
            f"payload of {size} bytes exceeds the limit of {limits.max_payload_bytes} bytes "
            f"({Limits.ENV['max_payload_bytes']})"
        )


def _json_payloads(body: Body, limits: Limits) -> tuple[list[bytes], bool]:
    """Base64-decoded images of a JSON request and whether it is a batch."""
    document = body if isinstance(body, (dict, list)) else _parse_json(body, limits)
    if isinstance(document, dict):
        _refuse_urls(document)
        has_one, has_many = "image" in document, "images" in document
        if has_one and has_many:
            raise BadRequestError('JSON has both "image" and "images"; send one of them')
        if has_one:
            return [_b64_image(document["image"], "image")], False
        if has_many:
            return _b64_batch(document["images"], limits), True
        raise BadRequestError(
            'JSON object has no "image" or "images" key (got keys: '
            f"{_show(sorted(map(str, document))[:10])}); send "
            '{"image": "<base64>"}, {"images": ["<base64>", ...]} or ["<base64>", ...]'
        )
    if isinstance(document, list):
        return _b64_batch(document, limits), True
    raise BadRequestError(
        f"JSON body is a {type(document).__name__}; send "
        '{"image": "<base64>"}, {"images": ["<base64>", ...]} or ["<base64>", ...]'
    )


def _parse_json(body: Body, limits: Limits) -> Any:
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)  # type: ignore[arg-type]
    _check_payload_size(len(raw), limits)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # incl. JSONDecodeError, UnicodeDecodeError
        raise BadRequestError(f"malformed JSON body: {exc}") from None


def _refuse_urls(document: dict) -> None:
    for key in URL_KEYS:
        if key in document:
            raise BadRequestError(
                f'JSON key "{key}": URLs are not fetched by this endpoint; send the image '
                'bytes base64-encoded as {"image": "<base64>"}'
            )


def _b64_batch(items: Any, limits: Limits) -> list[bytes]:
    if not isinstance(items, list):
        raise BadRequestError(
            f'"images" must be a list of base64 strings, got {type(items).__name__}'
        )
    if not items:
        raise BadRequestError("empty batch: send at least one base64 image")
    if len(items) > limits.max_batch_size:
        raise PayloadTooLargeError(
            f"batch of {len(items)} images exceeds the limit of {limits.max_batch_size} "
            f"({Limits.ENV['max_batch_size']})"
        )
    return [_b64_image(item, f"images[{i}]") for i, item in enumerate(items)]


def _b64_image(value: Any, where: str) -> bytes:
    """Decode one base64 string (optionally a ``data:...;base64,`` URI); never a URL."""
    if isinstance(value, dict) and any(k in value for k in URL_KEYS):
        _refuse_urls(value)
    if not isinstance(value, str):
        raise BadRequestError(f"{where}: expected a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.lower().startswith(URL_PREFIXES):
        raise BadRequestError(
            f"{where}: looks like a URL ({_show(text, 60)}); URLs are not fetched by this "
            "endpoint, send the image bytes base64-encoded"
        )
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise BadRequestError(f"{where}: data URI must be base64 (data:<type>;base64,<data>)")
    if not text:
        raise BadRequestError(f"{where}: empty image string")
    compact = "".join(text.split())
    url_safe = "-" in compact or "_" in compact  # the URL-safe alphabet, as strict as the standard one
    if url_safe and ("+" in compact or "/" in compact):
        raise BadRequestError(f"{where}: not valid base64 (it mixes the standard '+/' and URL-safe '-_' alphabets)")
    try:
        return base64.b64decode(_pad(compact), altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"{where}: not valid base64 ({exc})") from None


def _pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def image_labels(count: int, batched: bool) -> list[str]:
    """How messages name a request's images: ``images[i]`` in a batch (even of one), else ``image``."""
    return [f"images[{i}]" if batched else "image" for i in range(count)]


def _decode_all(
    payloads: Sequence[bytes], batched: bool, limits: Limits
) -> tuple[Image.Image, ...]:
    """Check every image's header against the pixel limits, then decode them all."""
    labels = image_labels(len(payloads), batched)
    opened = [_open_checked(data, label, limits) for data, label in zip(payloads, labels)]
    total = sum(im.size[0] * im.size[1] for im in opened)
    if total > limits.max_total_pixels:
        raise PayloadTooLargeError(
            f"request holds {total} pixels in all, over the limit of {limits.max_total_pixels} "
            f"({Limits.ENV['max_total_pixels']}); send fewer or smaller images"
        )
    for image, label in zip(opened, labels):
        _decode(image, label)
    return tuple(opened)  # in-memory (BytesIO) files: nothing to close


def _open_checked(data: bytes, label: str, limits: Limits) -> Image.Image:
    """Open (header only, no pixel decoding) and check the declared size."""
    if not data:
        raise BadRequestError(f"{label}: empty image data")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"{label}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadRequestError(
            f"{label}: not a decodable image ({len(data)} bytes; supported formats: "
            f"{', '.join(IMAGE_FORMATS)})"
        ) from None
    except Exception as exc:  # corrupt headers raise all sorts (SyntaxError, struct.error, ...)
        raise BadRequestError(f"{label}: could not read the image header ({exc})") from None
    try:
        check_image_size(image.size, label, limits)
    except InferenceError:
        image.close()
        raise
    return image


def check_image_size(size: tuple[int, int], label: str, limits: Limits) -> None:
    """Refuse an empty size (400), a size over the pixel limit (413) or a long thin image
    over the aspect-ratio limit (400), from the header's declared size alone."""
    width, height = size
    if width < 1 or height < 1:
        raise BadRequestError(f"{label}: image declares an empty size {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise PayloadTooLargeError(
            f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_image_pixels} pixels per image ({Limits.ENV['max_image_pixels']})"
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise BadRequestError(
            f"{label}: {width}x{height} has an aspect ratio of {max(width, height) / min(width, height):.0f}:1, "
            f"over the limit of {limits.max_aspect_ratio}:1 ({Limits.ENV['max_aspect_ratio']}); "
            "crop or pad the image closer to a square"
        )


def check_resized_pixels(images: Sequence[Image.Image], image_size: int, limits: Limits, batched: bool) -> None:
    """Refuse (413) an image that would grow over ``max_resized_pixels`` when its shorter side
    is scaled to the model's input size, before anything is resized."""
    for image, label in zip(images, image_labels(len(images), batched)):
        width, height = resized_size(image.size[0], image.size[1], image_size)
        if width * height > limits.max_resized_pixels:
            raise PayloadTooLargeError(
                f"{label}: {image.size[0]}x{image.size[1]} would be resized to {width}x{height} = "
                f"{width * height} pixels for this {image_size}px model, over the limit of "
                f"{limits.max_resized_pixels} ({Limits.ENV['max_resized_pixels']})"
            )


def _decode(image: Image.Image, label: str) -> None:
    """Decode the pixels (of the first frame) in place; corrupt data is a 400."""
    try:
        image.load()
    except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, ValueError...
        raise BadRequestError(
            f"{label}: could not decode the {image.format} image ({exc})"
        ) from None


# ---------------------------------------------------------------------------- predict_fn
@dataclass(frozen=True)
class Prediction:
    """Softmax probabilities ``[N, C]`` (CPU float32) and what output_fn needs to label them."""

    probabilities: torch.Tensor
    classes: tuple[str, ...]
    batched: bool


def preprocess(images: Sequence[Image.Image], model: LoadedModel) -> torch.Tensor:
    """The training/evaluation preprocessing: ``image_to_uint8`` then ``normalize_batch``."""
    batch = torch.stack([image_to_uint8(image, model.image_size) for image in images])
    return normalize_batch(batch.to(model.device), model.mean, model.std)


def predict_fn(data: InferenceRequest, model: LoadedModel) -> Prediction:
    """One batched forward pass; returns softmax probabilities (413 first if an image would
    be resized over ``IMGPIPE_MAX_RESIZED_PIXELS``)."""
    check_resized_pixels(data.images, model.image_size, Limits.from_env(), data.batched)
    with torch.inference_mode():
        logits = model.model(preprocess(data.images, model))
        probabilities = torch.softmax(logits.float(), dim=1).cpu()
    return Prediction(probabilities, model.classes, data.batched)


# ---------------------------------------------------------------------------- output_fn
def output_fn(prediction: Prediction, accept: Optional[str]) -> str:
    """JSON top-k ``[{"label", "index", "probability"}]`` per image (a list of them for a batch)."""
    if not accepts_json(accept):
        raise UnsupportedMediaTypeError(
            f"cannot answer in {_show(accept)}; this endpoint answers {JSON_CONTENT_TYPE} "
            "(send Accept: application/json, */* or none)"
        )
    k = min(top_k_from_env(), len(prediction.classes))
    answers = [top_k(row, prediction.classes, k) for row in prediction.probabilities]
    return json.dumps(answers if prediction.batched else answers[0])


def accepts_json(accept: Optional[str]) -> bool:
    """Whether an Accept header (possibly a list with parameters) allows application/json."""
    if not accept or not accept.strip():
        return True
    return any(parse_media_type(part) in ACCEPTED_ACCEPT_TYPES for part in accept.split(","))


def top_k(probabilities: torch.Tensor, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, best first."""
    values, indices = torch.topk(probabilities, k)
    return [
        {"label": classes[i], "index": i, "probability": p}
        for p, i in zip(values.tolist(), indices.tolist())
    ]
