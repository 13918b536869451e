"""steps/preprocess.py at its edges: the boundaries of each rule, one case per line of behaviour.

Each test pins an answer that a plausible slip (``<`` for ``<=``, ``and`` for ``or``, a
constant off by one) would change; the mutation run (docs/testing.md) found them unpinned.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagefactory as factory
import test_preprocess
from imgclf.pixels import scale_to_uint8
from scripts import load_script

pre = load_script("imgpipe_steps_preprocess", "steps/preprocess.py")


failure_file = test_preprocess.failure_file  # autouse: SM_OUTPUT_FAILURE in tmp_path for every test


# --------------------------------------------------------------------------- pixel conversion


def test_float_pixels_already_in_0_255_are_kept_even_from_zero():
    values = np.array([[0.0, 100.0, 200.0]], dtype=np.float32)
    assert scale_to_uint8(values, "F").tolist() == [[0, 100, 200]]


def test_float_pixels_in_0_1_are_scaled_by_255_and_others_by_their_range():
    assert scale_to_uint8(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").tolist() == [[0, 128, 255]]
    assert scale_to_uint8(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), "F").tolist() == [[0, 128, 255]]
    assert scale_to_uint8(np.array([[0.0, 510.0]], dtype=np.float32), "F").tolist() == [[0, 255]]


def test_32_bit_integer_pixels_in_16_bit_range_scale_by_257_others_by_range():
    assert scale_to_uint8(np.array([[0, 1000, 65535]]), "I").tolist() == [[0, 4, 255]]
    assert scale_to_uint8(np.array([[0, 1000]]), "I").tolist() == [[0, 4]]  # not stretched to 255
    assert scale_to_uint8(np.array([[-10, 0, 10]]), "I").tolist() == [[0, 127, 255]]
    assert scale_to_uint8(np.array([[0, 65536]]), "I").tolist() == [[0, 255]]


class _Unconvertible:
    """A decoded image whose mode PIL cannot turn into RGB."""
    mode = "XYZ"
    info: dict = {}

    def convert(self, mode: str):
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")


def test_a_mode_pil_cannot_convert_is_an_unsupported_mode_error():
    with pytest.raises(pre.UnsupportedModeError, match="cannot convert mode XYZ to RGB"):
        pre.to_rgb(_Unconvertible())


class _BrokenExif:
    def getexif(self):
        raise SyntaxError("malformed EXIF")


def test_exif_orientation_defaults_to_upright():
    assert pre.exif_orientation(_BrokenExif()) == 1
    assert pre.exif_orientation(Image.new("RGB", (2, 2))) == 1
    image = Image.new("RGB", (2, 2))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    with Image.open(buffer) as rotated:
        assert pre.exif_orientation(rotated) == 6


def test_downscale_boundaries():
    image = Image.new("RGB", (30, 20))
    assert pre.downscale(image, 0) is image  # 0: off
    assert pre.downscale(image, 30) is image  # already that small: untouched, not resampled
    assert pre.downscale(image, 1).size == (1, 1)
    assert pre.downscale(image, 15).size == (15, 10)


# --------------------------------------------------------------------------- layout


def test_single_wrapping_folders_are_unwrapped_at_most_eight_deep(tmp_path):
    inner = tmp_path
    for depth in range(10):
        inner = inner / f"wrap{depth}"
    factory.write_class_images(inner, "cat", 1)
    factory.write_class_images(inner, "dog", 1)
    assert pre.unwrap_top(tmp_path) == tmp_path / "wrap0" / "wrap1" / "wrap2" / "wrap3" / "wrap4" / "wrap5" / "wrap6" / "wrap7"


# --------------------------------------------------------------------------- running


def test_one_worker_decodes_in_this_process(monkeypatch):
    pids = []

    def process_file(task):
        pids.append(os.getpid())
        return {"ok": True}

    monkeypatch.setattr(pre, "process_file", process_file)
    results = pre.run_tasks(list(range(5)), 1, pre.Progress(5, interval=60, stream=io.StringIO()))
    assert results == [{"ok": True}] * 5 and pids == [os.getpid()] * 5


def test_progress_lines_every_ten_percent_with_the_skipped_count():
    stream = io.StringIO()
    progress = pre.Progress(20, interval=3600, stream=stream)
    for index in range(20):
        progress.update(ok=index % 4 != 3)  # every 4th file fails
    lines = [line.split(" files/s")[0].rsplit(" ", 1)[0] for line in stream.getvalue().splitlines()]
    assert lines == [f"progress: decoded {done}/20 ({done * 5}%) skipped={done // 4}" for done in range(2, 21, 2)]
    assert progress.failed == 5 and progress.done == 20


@pytest.mark.parametrize("arguments, message", [
    (dict(valid_ratio=1.0), "ratios must be in"),
    (dict(test_ratio=1.0), "ratios must be in"),
    (dict(valid_ratio=0.5, test_ratio=0.5), "ratios must be in"),
    (dict(workers=0), "--workers must be >= 1"),
    (dict(max_pixels=0), "--max-image-pixels must be >= 1"),
    (dict(min_images=0), "--min-images-per-class must be >= 1"),
    (dict(max_side=-1), "--max-image-side must be >= 0"),
])
def test_parameters_just_outside_their_range_are_refused(arguments, message):
    values = dict(valid_ratio=0.1, test_ratio=0.1, min_images=1, max_side=0, workers=None, max_pixels=1)
    pre.validate_parameters(**values)  # the edges themselves are accepted
    pre.validate_parameters(**{**values, "valid_ratio": 0.0, "test_ratio": 0.0, "workers": 1})
    with pytest.raises(pre.PreprocessError, match=message):
        pre.validate_parameters(**{**values, **arguments})


def test_no_workers_given_means_one_per_usable_core(tmp_path, capsys):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"cat": 4, "dog": 4})
    started = time.monotonic()
    report = pre.preprocess(inp, tmp_path / "out", workers=None, progress_seconds=60)
    took = time.monotonic() - started
    cores = len(os.sched_getaffinity(0))
    assert report["parameters"]["workers"] == cores == pre.default_workers()
    assert f"; {cores} workers" in capsys.readouterr().out
    assert 0 <= report["elapsed_seconds"] <= took + 0.01


def test_the_failure_file_is_written_into_folders_that_do_not_exist_yet(failure_file):
    assert not failure_file.parent.exists()
    pre.write_failure("no class folders found")
    assert failure_file.read_text() == "no class folders found\n"


def test_a_source_keeps_its_own_file_name_when_another_converts_to_it(tmp_path):
    """``x.jpeg`` is written as ``x.jpg``, so it collides with ``x.jpg``, which keeps the name."""
    inp = tmp_path / "in"
    factory.write_image(inp / "a" / "x.jpg", key="the jpg")
    factory.write_image(inp / "a" / "x.jpeg", key="the jpeg")
    factory.write_class_images(inp, "a", 3)
    factory.write_class_images(inp, "b", 5)
    out = tmp_path / "out"
    pre.preprocess(inp, out, workers=1, valid_ratio=0.0, test_ratio=0.0, progress_seconds=60)
    with open(out / "report" / "manifest.csv", newline="") as handle:
        files = {row["source"]: row["file"] for row in csv.DictReader(handle)}
    assert files["a/x.jpg"] == "x.jpg" and files["a/x.jpeg"].startswith("x-")
    assert json.loads((out / "report" / "report.json").read_text())["totals"]["train"] == 10


# --------------------------------------------------------------------------- second batch


def _stage_one(tmp_path: Path, source: Path) -> dict:
    """``process_file`` on one real file, staged under ``tmp_path``."""
    task = pre.Task(0, str(source), str(tmp_path / "staged"), 0, pre.DEFAULT_MAX_IMAGE_PIXELS)
    result = pre.process_file(task)
    assert result["ok"], result
    return result


def _decoded(path: str | Path) -> list:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).tolist()


def test_converted_lossy_sources_are_written_as_jpeg_quality_95(tmp_path):
    source = factory.write_image(tmp_path / "cmyk.jpg", mode="CMYK", size=(32, 24))
    result = _stage_one(tmp_path, source)
    assert (result["output_format"], result["copied"], result["mode"]) == ("jpeg", False, "CMYK")
    expected = {}
    with Image.open(source) as image:
        rgb = image.convert("RGB")
        for quality in (95, 96):
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=quality)
            expected[quality] = _decoded(buffer)
    assert expected[95] != expected[96]  # the quality is visible in the pixels
    assert _decoded(result["staged"]) == expected[95]


def _jpeg_with_orientation(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(factory.pixels(path.name, (12, 10))).save(path, exif=exif)
    return path


def test_exif_orientations_2_and_8_are_applied_and_invalid_0_and_9_are_ignored(tmp_path):
    rotated = _stage_one(tmp_path, _jpeg_with_orientation(tmp_path / "eight.jpg", 8))
    assert rotated["exif_rotated"] and not rotated["copied"] and rotated["out_size"] == [10, 12]
    mirrored = _stage_one(tmp_path, _jpeg_with_orientation(tmp_path / "two.jpg", 2))
    assert mirrored["exif_rotated"] and not mirrored["copied"] and mirrored["out_size"] == [12, 10]
    for invalid in (0, 9):
        source = _jpeg_with_orientation(tmp_path / f"invalid-{invalid}.jpg", invalid)
        kept = _stage_one(tmp_path, source)
        assert not kept["exif_rotated"] and kept["copied"] and kept["out_size"] == [12, 10]
        assert Path(kept["staged"]).read_bytes() == source.read_bytes()


def test_a_constant_image_outside_the_plain_ranges_converts_without_dividing_by_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scale_to_uint8(np.full((1, 3), 70000), "I").tolist() == [[0, 0, 0]]
        assert scale_to_uint8(np.full((1, 2), -5), "I").tolist() == [[0, 0]]
        assert scale_to_uint8(np.full((1, 2), -3.0, dtype=np.float32), "F").tolist() == [[0, 0]]


# --------------------------------------------------------------------------- layout and scanning


def test_an_input_without_folders_fails_as_having_no_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    factory.write_text(tmp_path / "notes" / "README.md")
    for inp in (tmp_path / "empty", tmp_path / "notes"):
        assert pre.unwrap_top(inp) == inp
        with pytest.raises(pre.PreprocessError, match="no class folders found in the input"):
            pre.preprocess(inp, tmp_path / "out", workers=1)


def test_a_class_folder_is_only_unwrapped_when_its_own_name_is_alone_inside(tmp_path):
    inp = tmp_path / "in"
    factory.write_image(inp / "cat" / "cat" / "x.png")
    factory.write_image(inp / "cat" / "kitten" / "y.png")
    factory.write_image(inp / "dog" / "dog" / "z.png")
    scan = pre.scan_input(inp)
    assert sorted((f.class_name, f.name_parts) for f in scan.files) == [
        ("cat", ("cat", "x.png")), ("cat", ("kitten", "y.png")), ("dog", ("z.png",))]


def test_an_empty_class_folder_fails_the_run_naming_it(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"b": 3, "c": 3})
    (inp / "a").mkdir()  # sorts first: the classes after it are still split and counted
    with pytest.raises(pre.PreprocessError, match=r"1 of 3 classes .*\n  class 'a': 0 usable images \(minimum 3\)"):
        pre.preprocess(inp, tmp_path / "out", workers=1, progress_seconds=60)


def test_a_given_split_without_usable_images_of_a_class_fails_even_with_zero_ratios(tmp_path):
    inp = tmp_path / "in"
    for split, count in (("train", 3), ("valid", 1), ("test", 1)):
        factory.write_class_images(inp / split, "a", count, prefix=split)
        factory.write_class_images(inp / split, "b", count if split != "test" else 0, prefix=split)
    factory.write_corrupt_png(inp / "test" / "b" / "broken.png")
    with pytest.raises(pre.PreprocessError, match=r"class 'b': no test images \(train=3, valid=1, test=0, 1 files skipped\)"):
        pre.preprocess(inp, tmp_path / "out", workers=1, valid_ratio=0.0, test_ratio=0.0, progress_seconds=60)
    assert pre._produced_splits("train/valid/test", 0.0, 0.0) == {"train", "valid", "test"}
    assert pre._produced_splits("flat", 0.0, 0.2) == {"train", "test"}


def test_a_class_of_one_image_is_enough_when_nothing_is_carved_and_the_minimum_is_one(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 1, "b": 2})
    report = pre.preprocess(inp, tmp_path / "out", workers=1, valid_ratio=0.0, test_ratio=0.0,
                            min_images_per_class=1, progress_seconds=60)
    assert report["counts"] == {"train": {"a": 1, "b": 2}, "valid": {"a": 0, "b": 0}, "test": {"a": 0, "b": 0}}


# --------------------------------------------------------------------------- defaults and outputs


def test_defaults_carve_ten_percent_each_with_seed_42_and_a_minimum_of_three(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 10, "b": 3})
    report = pre.preprocess(inp, tmp_path / "out", workers=1, progress_seconds=60)
    assert report["format_version"] == 1
    assert report["parameters"] == {"valid_ratio": 0.1, "test_ratio": 0.1, "seed": 42, "min_images_per_class": 3,
                                    "max_image_side": 0, "max_image_pixels": Image.MAX_IMAGE_PIXELS, "workers": 1}
    assert report["counts"] == {"train": {"a": 8, "b": 1}, "valid": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}}
    (inp / "b" / "img_002.png").unlink()
    with pytest.raises(pre.PreprocessError, match=r"class 'b': 2 usable images \(minimum 3\)"):
        pre.preprocess(inp, tmp_path / "out2", workers=1, progress_seconds=60)


def _suffixed(rel: str, length: int = 8) -> str:
    return hashlib.sha1(rel.encode()).hexdigest()[:length]


def test_a_colliding_name_gets_8_hex_of_its_source_path_or_more_when_that_is_taken(tmp_path):
    inp = tmp_path / "in"
    factory.write_image(inp / "a" / "x.jpg", key="jpg")
    factory.write_image(inp / "a" / "x.jpeg", key="jpeg")
    factory.write_image(inp / "b" / "y.jpg", key="y jpg")
    factory.write_image(inp / "b" / "y.jpeg", key="y jpeg")
    taken = f"y-{_suffixed('b/y.jpeg')}.jpg"  # the name the collision would get is a source of its own
    factory.write_image(inp / "b" / taken, key="taken")
    factory.write_class_images(inp, "a", 1)
    out = tmp_path / "out"
    pre.preprocess(inp, out, workers=1, valid_ratio=0.0, test_ratio=0.0, min_images_per_class=1, progress_seconds=60)
    with open(out / "report" / "manifest.csv", newline="") as handle:
        files = {row["source"]: row["file"] for row in csv.DictReader(handle)}
    assert files["a/x.jpeg"] == f"x-{_suffixed('a/x.jpeg')}.jpg"
    assert files[f"b/{taken}"] == taken and files["b/y.jpeg"] == f"y-{_suffixed('b/y.jpeg', 9)}.jpg"
    assert sorted(p.name for p in (out / "train" / "b").iterdir()) == sorted(files[f"b/{n}"] for n in ("y.jpg", "y.jpeg", taken))


def test_an_output_dir_holding_earlier_results_is_refused_but_empty_folders_are_fine(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 3, "b": 3})
    out = tmp_path / "out"
    for folder in ("train", "valid", "test", "report"):
        (out / folder).mkdir(parents=True)
    pre.preprocess(inp, out, workers=1, progress_seconds=60)  # empty folders: accepted
    for folder in ("test", "report"):
        again = tmp_path / f"again-{folder}"
        factory.write_text(again / folder / "left-over.txt")
        with pytest.raises(pre.PreprocessError, match=f"output folder .*{folder} is not empty"):
            pre.preprocess(inp, again, workers=1, progress_seconds=60)


# --------------------------------------------------------------------------- workers and progress


def _pid_of(task) -> dict:
    """Stands in for ``process_file`` (module level, so worker processes can unpickle it);
    task 0 and every third after it fail."""
    return {"ok": task % 3 != 0, "task": task, "pid": os.getpid()}


@pytest.mark.parametrize("workers, count, in_this_process", [
    (2, 2, False), (2, 3, False), (3, 40, False), (2, 1, True), (1, 3, True),
])
def test_tasks_run_in_worker_processes_only_with_two_workers_and_two_tasks(monkeypatch, workers, count,
                                                                           in_this_process):
    monkeypatch.setattr(pre, "process_file", _pid_of)
    stream = io.StringIO()
    results = pre.run_tasks(list(range(count)), workers, pre.Progress(count, interval=3600, stream=stream))
    assert [r["task"] for r in results] == list(range(count))  # in task order
    assert all((r["pid"] == os.getpid()) == in_this_process for r in results)
    assert f"decoded {count}/{count} (100%) skipped={len(range(0, count, 3))} " in stream.getvalue()


def test_progress_of_a_single_file_is_100_percent():
    stream = io.StringIO()
    pre.Progress(1, interval=3600, stream=stream).update(ok=False)
    assert stream.getvalue().startswith("progress: decoded 1/1 (100%) skipped=1 ")


def test_progress_with_a_zero_interval_prints_every_file():
    stream = io.StringIO()
    progress = pre.Progress(100, interval=0.0, stream=stream)
    for _ in range(3):
        progress.update(ok=True)
    assert [line.split(" (")[0] for line in stream.getvalue().splitlines()] == [
        f"progress: decoded {done}/100" for done in (1, 2, 3)]


def test_one_usable_core_means_one_worker(monkeypatch):
    monkeypatch.setattr(pre.os, "sched_getaffinity", lambda pid: {3} if pid == 0 else {0, 1, 2, 3})  # 0: this process
    assert pre.default_workers() == 1


@pytest.mark.parametrize("cpu_count, workers", [(6, 6), (1, 1), (None, 1)])
def test_without_cpu_affinity_the_cpu_count_is_used_and_one_worker_when_unknown(monkeypatch, cpu_count, workers):
    monkeypatch.delattr(pre.os, "sched_getaffinity")
    monkeypatch.setattr(pre.os, "cpu_count", lambda: cpu_count)
    assert pre.default_workers() == workers


# --------------------------------------------------------------------------- failure file


def test_the_failure_file_is_written_into_nested_or_existing_folders(tmp_path, monkeypatch):
    for path in (tmp_path / "a" / "b" / "failure", tmp_path / "a" / "b" / "again"):
        monkeypatch.setenv("SM_OUTPUT_FAILURE", str(path))
        pre.write_failure("bad input")
        assert path.read_text() == "bad input\n"


def test_a_failure_file_that_cannot_be_written_is_ignored(tmp_path, monkeypatch):
    factory.write_text(tmp_path / "a-file")
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(tmp_path / "a-file" / "failure"))
    pre.write_failure("bad input")  # best effort: no exception
    assert pre.main(["--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")]) == 1


def test_32_bit_integer_pixels_round_half_up_at_each_step_of_257():
    # 128/257 < 0.5 <= 129/257 and 385/257 < 1.5 <= 386/257
    assert scale_to_uint8(np.array([[128, 129, 385, 386]]), "I").tolist() == [[0, 1, 1, 2]]


def test_downscale_keeps_at_least_one_pixel_on_the_short_side():
    assert pre.downscale(Image.new("RGB", (1, 100)), 10).size == (1, 10)
    assert pre.downscale(Image.new("RGB", (100, 1)), 10).size == (10, 1)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_8_bit_modes_convert_to_rgb_as_pil_does(mode):
    image = Image.fromarray(factory.pixels(mode, (6, 4))).convert(mode)
    assert np.asarray(pre.to_rgb(image)).tolist() == np.asarray(image.convert("RGB")).tolist()


def test_negative_ratios_are_refused():
    for ratios in (dict(valid_ratio=-0.1, test_ratio=0.1), dict(valid_ratio=0.1, test_ratio=-0.1)):
        with pytest.raises(pre.PreprocessError, match="ratios must be in"):
            pre.validate_parameters(**ratios, min_images=1, max_side=0, workers=None, max_pixels=1)


def test_a_wrapping_folder_is_descended_past_other_files_but_not_past_images(tmp_path):
    beside_notes, beside_image = tmp_path / "notes", tmp_path / "image"
    for top in (beside_notes, beside_image):
        factory.write_tree(top / "data", {"a": 1, "b": 1})
    factory.write_text(beside_notes / "README.md")
    factory.write_image(beside_image / "x.jpg")
    assert pre.unwrap_top(beside_notes) == beside_notes / "data"
    assert pre.unwrap_top(beside_image) == beside_image


def test_class_folders_with_sub_folders_and_a_lone_train_folder_are_not_descended_into(tmp_path):
    flat = tmp_path / "flat"
    factory.write_image(flat / "a" / "sub" / "x.png")
    factory.write_image(flat / "b" / "y.png")
    assert pre.unwrap_top(flat) == flat
    train_only = tmp_path / "train_only"
    factory.write_tree(train_only / "train", {"a": 1, "b": 1})
    scan = pre.scan_input(train_only)
    assert (scan.layout, scan.split_dirs, scan.classes_by_split) == ("train", {"train": "train"}, {"train": ["a", "b"]})


def test_a_class_folder_holding_only_a_differently_named_folder_is_kept(tmp_path):
    inp = tmp_path / "in"
    factory.write_image(inp / "m" / "a" / "x.png")  # 'a' sorts before 'm'
    factory.write_image(inp / "n" / "z" / "y.png")  # 'z' sorts after 'n'
    factory.write_image(inp / "Cat" / "cat" / "w.png")  # same name but for case: unwrapped
    assert sorted((f.class_name, f.name_parts) for f in pre.scan_input(inp).files) == [
        ("Cat", ("w.png",)), ("m", ("a", "x.png")), ("n", ("z", "y.png"))]


def test_two_folders_for_one_split_are_refused(tmp_path):
    for split in ("train", "val", "valid"):
        factory.write_tree(tmp_path / split, {"a": 1, "b": 1})
    with pytest.raises(pre.PreprocessError, match="two folders for the valid split: 'val' and 'valid'"):
        pre.scan_input(tmp_path)


def test_hidden_entries_are_counted_at_every_level_and_never_collected(tmp_path):
    inp = tmp_path / "in"
    data = inp / "data"
    factory.write_text(inp / ".DS_Store")  # 1: above the dataset root
    factory.write_text(data / "._notes")  # 1: in the dataset root
    train = data / "Train" / "train"  # split folder unwrapped whatever the case
    factory.write_text(data / "Train" / ".DS_Store")  # 1: in the split's wrapper
    factory.write_text(train / ".cache" / "one")  # 2: a hidden folder among the classes
    factory.write_text(train / ".cache" / "two")
    factory.write_image(train / "a" / "a" / "x.png")
    factory.write_text(train / "a" / "Thumbs.db")  # 1: in the class folder's wrapper
    factory.write_text(train / "a" / "a" / "._x.png")  # 1: beside the images
    for name in ("one", "two", "three"):  # 3: a hidden folder below the class
        factory.write_text(train / "a" / "a" / "__MACOSX" / name)
    factory.write_text(train / "b" / ".y.png")  # 1: beside a visible sub-folder
    factory.write_image(train / "b" / "sub" / "y.png")
    factory.write_tree(data / "test", {"a": 1, "b": 1})
    scan = pre.scan_input(inp)
    assert (scan.root_rel, scan.split_dirs) == ("data", {"train": "data/Train/train", "test": "data/test"})
    assert scan.hidden_ignored == 11
    assert sorted(f.rel for f in scan.files) == ["data/Train/train/a/a/x.png", "data/Train/train/b/sub/y.png",
                                                 "data/test/a/img_000.png", "data/test/b/img_000.png"]


def test_files_of_other_types_are_skipped_naming_their_extension(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 1, "b": 1})
    factory.write_text(inp / "a" / "notes.txt")
    factory.write_text(inp / "a" / "LICENSE")
    assert {s["path"]: s["detail"] for s in pre.scan_input(inp).skipped} == {
        "a/notes.txt": "extension '.txt' is not an image type", "a/LICENSE": "extension '(none)' is not an image type"}


def test_float_pixels_in_0_255_are_kept_only_beyond_1_and_others_scaled_by_their_range():
    assert scale_to_uint8(np.array([[0.0, 0.5]], dtype=np.float32), "F").tolist() == [[0, 128]]  # 0..1
    assert scale_to_uint8(np.array([[-0.5, 0.0]], dtype=np.float32), "F").tolist() == [[0, 255]]  # span < 1
    assert scale_to_uint8(np.array([[0.0, 1.25, 2.0]], dtype=np.float32), "F").tolist() == [[0, 1, 2]]
    assert scale_to_uint8(np.array([[10.0, 255.0]], dtype=np.float32), "F").tolist() == [[10, 255]]
    assert scale_to_uint8(np.array([[0.0, 255.5]], dtype=np.float32), "F").tolist() == [[0, 255]]


def test_32_bit_integer_pixels_just_beyond_16_bit_are_scaled_by_their_range():
    assert scale_to_uint8(np.array([[0, 1000, 65536]]), "I").tolist() == [[0, 3, 255]]
    assert scale_to_uint8(np.array([[-1, 0]]), "I").tolist() == [[0, 255]]


def test_alpha_is_composited_over_opaque_white():
    value, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([value, 255 - value, value // 2, alpha], axis=-1).astype(np.uint8)
    rgb = np.asarray(pre.to_rgb(Image.fromarray(rgba, "RGBA"))).astype(int)
    over_white = np.round(rgba[..., :3] * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255))
    assert (rgb == over_white).all()


def test_each_ten_percent_step_prints_once_at_the_first_file_that_reaches_it():
    stream = io.StringIO()
    progress = pre.Progress(33, interval=3600, stream=stream)  # 3 % a file: the steps are not hit exactly
    for _ in range(33):
        progress.update(ok=True)
    printed = [int(line.split()[2].split("/")[0]) for line in stream.getvalue().splitlines()]
    firsts = [next(done for done in range(1, 34) if 100 * done // 33 >= step) for step in range(10, 101, 10)]
    assert printed == firsts == [4, 7, 10, 14, 17, 20, 24, 27, 30, 33]


def test_a_file_beside_the_split_folders_is_skipped_as_outside_any_class_folder(tmp_path):
    for split in ("train", "test"):
        factory.write_tree(tmp_path / split, {"a": 1, "b": 1})
    factory.write_image(tmp_path / "stray.jpg")
    assert pre.scan_input(tmp_path).skipped == [
        {"path": "stray.jpg", "reason": "not_in_class_folder", "detail": "file is not inside a split/class folder"}]


def test_a_16_bit_png_with_a_transparent_colour_key_is_still_scaled_not_clipped(tmp_path):
    path = tmp_path / "key.png"
    Image.fromarray(np.array([[25700, 65535, 0]], dtype=np.uint16)).save(path, transparency=5)  # key unused
    with Image.open(path) as image:
        image.load()
        assert (image.mode, image.info.get("transparency")) == ("I;16", 5)
        assert np.asarray(pre.to_rgb(image))[0, :, 0].tolist() == [100, 255, 0]


def test_an_image_decoded_but_not_convertible_is_skipped_as_unsupported_mode(tmp_path, monkeypatch):
    def to_rgb(image):
        raise pre.UnsupportedModeError(f"cannot convert mode {image.mode} to RGB: no conversion")

    monkeypatch.setattr(pre, "to_rgb", to_rgb)
    task = pre.Task(7, str(factory.write_image(tmp_path / "x.png")), str(tmp_path / "staged"), 0, 10_000)
    assert pre.process_file(task) == {"index": 7, "ok": False, "reason": "unsupported_mode",
                                      "detail": "cannot convert mode RGB to RGB: no conversion"}


class _Clock:
    """Stands in for the ``time`` module: ``monotonic`` returns the given instants in turn."""

    def __init__(self, *instants: float):
        self.instants = list(instants)

    def monotonic(self) -> float:
        return self.instants.pop(0)


def test_progress_prints_when_the_interval_has_passed_with_rate_and_time_left(monkeypatch):
    monkeypatch.setattr(pre, "time", _Clock(10.0, 11.0, 12.0, 13.0, 16.0))
    stream = io.StringIO()
    progress = pre.Progress(100, interval=2.0, stream=stream)
    for _ in range(4):
        progress.update(ok=True)
    assert stream.getvalue().splitlines() == [
        "progress: decoded 2/100 (2%) skipped=0 1.0 files/s eta=98s",  # exactly 2 s after the start
        "progress: decoded 4/100 (4%) skipped=0 0.7 files/s eta=144s",  # 4 s after the last line
    ]


def test_progress_survives_a_clock_that_has_not_moved(monkeypatch):
    monkeypatch.setattr(pre, "time", _Clock(5.0, 5.0))
    stream = io.StringIO()
    pre.Progress(1, interval=2.0, stream=stream).update(ok=True)
    assert stream.getvalue().startswith("progress: decoded 1/1 (100%) skipped=0 ")


def test_a_valid_image_copying_a_train_image_of_another_class_is_dropped(tmp_path):
    inp = tmp_path / "in"
    for split, count in (("train", 3), ("valid", 1), ("test", 1)):
        for name in ("a", "b"):
            factory.write_class_images(inp / split, name, count, prefix=split)
    (inp / "valid" / "a" / "relabelled.png").write_bytes((inp / "train" / "b" / "train_000.png").read_bytes())
    report = pre.preprocess(inp, tmp_path / "out", workers=1, progress_seconds=60)
    assert report["duplicates"]["details"][0]["dropped"] == [
        {"path": "valid/a/relabelled.png", "reason": "copy_of_train_image", "duplicate_of": "train/b/train_000.png"}]
    assert report["counts"]["valid"] == {"a": 1, "b": 1}


def test_split_targets_leave_train_empty_rather_than_invent_an_image():
    assert pre.split_targets(2, ("train", "valid", "test"), 0.1, 0.1) == {"train": 0, "valid": 1, "test": 1}


def test_a_class_whose_test_share_is_filled_by_label_conflicts_puts_its_own_images_elsewhere(tmp_path):
    inp = tmp_path / "in"
    for index, path in enumerate(factory.write_class_images(inp, "b", 3, prefix="shared")):
        (inp / "a" / f"shared_{index:03d}.png").parent.mkdir(parents=True, exist_ok=True)
        (inp / "a" / f"shared_{index:03d}.png").write_bytes(path.read_bytes())  # same pixels, labelled a and b
    factory.write_class_images(inp, "a", 7)
    factory.write_class_images(inp, "b", 6)
    out = tmp_path / "out"
    # seed 57 shuffles a's three shared images into a's three test places (10 images: 3/3/4)
    report = pre.preprocess(inp, out, workers=1, valid_ratio=0.25, test_ratio=0.25, seed=57, progress_seconds=60)
    assert report["duplicates"]["label_conflicts"] == 3
    # b (9 images) wanted 2 test images and got 3 through a: none of its own goes to test
    assert report["counts"] == {"train": {"a": 4, "b": 4}, "valid": {"a": 3, "b": 2}, "test": {"a": 3, "b": 3}}
    assert sorted(p.name for p in (out / "test" / "b").iterdir()) == [f"shared_{i:03d}.png" for i in range(3)]


def test_a_class_with_exactly_the_minimum_is_only_blamed_for_its_empty_split():
    counts = {"train": {"a": 0, "b": 5}, "valid": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}}
    with pytest.raises(pre.PreprocessError) as error:
        pre.check_counts(counts, ["a", "b"], ["train", "valid", "test"], 3, {}, "p")
    assert str(error.value) == "too few images to split 1 of 2 classes (p):\n  class 'a': no train images (train=0, valid=2, test=1)"


def test_a_source_named_like_a_nested_or_converted_one_keeps_its_name(tmp_path):
    inp = tmp_path / "in"
    factory.write_image(inp / "a" / "sub" / "x.png", key="nested")  # written as sub__x.png
    factory.write_image(inp / "a" / "sub__x.png", key="literal")
    factory.write_image(inp / "a" / "Y.tif", key="tif")  # written as Y.png, sorts before y.png
    factory.write_image(inp / "a" / "y.png", key="png")
    factory.write_class_images(inp, "b", 1)
    names = pre.output_names([pre.Decoded(source, {"output_format": "png"}, "train")
                              for source in pre.scan_input(inp).files])
    assert sorted(names.values()) == sorted(["sub__x.png", f"sub__x-{_suffixed('a/sub/x.png')}.png",
                                             "y.png", f"Y-{_suffixed('a/Y.tif')}.png", "img_000.png"])


def test_a_class_too_small_for_every_carved_split_is_blamed_for_each_empty_one(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 1, "b": 5})
    with pytest.raises(pre.PreprocessError, match=r"\n  class 'a': no train images; no valid images \(train=0, valid=0, test=1\)$"):
        pre.preprocess(inp, tmp_path / "out", workers=1, min_images_per_class=1, progress_seconds=60)
