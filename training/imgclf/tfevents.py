"""TensorBoard event files (scalars) written and read with the standard library only.

SageMaker's PyTorch 2.x training images do not install the ``tensorboard`` package that
``torch.utils.tensorboard`` imports, and its current releases need a protobuf newer than
the one smdebug can live with; so the recording writes the format itself. The files are
TensorBoard's own: TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) of
``tensorflow.Event`` protobuf messages, first a ``file_version`` event, then one event per
step holding a ``Summary`` of ``simple_value`` scalars. ``tensorboard --logdir``,
SageMaker's managed TensorBoard and smdebug's event reader all read them.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

FILE_MARKER = "tfevents"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- protobuf wire format (only what Event/Summary need) -------------------------------
def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 negatives as two's complement, like protobuf
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: Optional[dict[str, float]] = None,
                 file_version: Optional[str] = None) -> bytes:
    """A serialized ``Event`` (wall_time=1, step=2, file_version=3, summary=5)."""
    out = bytearray(_varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items())  # Summary.value=1 -> Value{tag=1, simple_value=2}
        out += _length_delimited(5, summary)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a serialized message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> tuple[float, int, dict[str, float]]:
    """(wall_time, step, {tag: simple_value}) of a serialized ``Event``."""
    wall_time, step, scalars = 0.0, 0, {}
    for field, _, value in _fields(data):
        if field == 1:
            wall_time = struct.unpack("<d", value)[0]
        elif field == 2:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 5:
            for sfield, _, entry in _fields(value):
                if sfield != 1:
                    continue
                tag, number = None, None
                for vfield, wire, item in _fields(entry):
                    if vfield == 1:
                        tag = item.decode()
                    elif vfield == 2 and wire == 5:
                        number = struct.unpack("<f", item)[0]
                if tag is not None and number is not None:
                    scalars[tag] = number
    return wall_time, step, scalars


# -- files ------------------------------------------------------------------------------
class EventFileWriter:
    """Appends scalar events to one new event file in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike, suffix: str = ""):
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.{FILE_MARKER}.{int(time.time())}.{socket.gethostname()}.{os.getpid()}{suffix}"
        self.path = Path(log_dir) / name
        self._file: BinaryIO = open(self.path, "ab")
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, payload: bytes) -> None:
        header = struct.pack("<Q", len(payload))
        self._file.write(header + struct.pack("<I", masked_crc(header)) + payload + struct.pack("<I", masked_crc(payload)))

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: Optional[float] = None) -> None:
        """One event at ``step`` holding every ``tag: value`` of ``scalars``."""
        if scalars:
            self._write(encode_event(time.time() if wall_time is None else wall_time, step, scalars))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
    """The payloads of a TFRecord file; a truncated last record (a job killed mid-write) ends it."""
    with open(path, "rb") as handle:
        while True:
            header = handle.read(12)
            if len(header) < 12:
                return
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if masked_crc(header[:8]) != length_crc:
                raise ValueError(f"{path}: corrupt record header (CRC mismatch)")
            payload, footer = handle.read(length), handle.read(4)
            if len(payload) < length or len(footer) < 4:
                return
            if masked_crc(payload) != struct.unpack("<I", footer)[0]:
                raise ValueError(f"{path}: corrupt record (CRC mismatch)")
            yield payload


def event_files(log_dir: str | os.PathLike) -> list[Path]:
    """Event files under ``log_dir`` (any depth), oldest first by name then path."""
    return sorted((p for p in Path(log_dir).rglob(f"*{FILE_MARKER}*") if p.is_file()),
                  key=lambda p: (p.name.split(".")[3:4], str(p)))


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float, float]]]:
    """``{tag: [(step, wall_time, value)]}`` over every event file, sorted by step; a step
    written twice (a resumed job repeating part of an epoch) keeps its latest value."""
    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for path in event_files(log_dir):
        for payload in read_records(path):
            wall_time, step, scalars = decode_event(payload)
            for tag, value in scalars.items():
                latest.setdefault(tag, {})[step] = (wall_time, value)
    return {tag: [(step, wt, v) for step, (wt, v) in sorted(points.items())] for tag, points in latest.items()}
