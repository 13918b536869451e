"""Tests for steps/preprocess.py on real image files written with PIL."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagefactory as factory
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "steps" / "preprocess.py"
pre = load_script("imgpipe_steps_preprocess", "steps/preprocess.py")


@pytest.fixture(autouse=True)
def failure_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "sm-output" / "failure"
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(path))
    return path


def run(inp: Path, out: Path, **kwargs) -> dict:
    """preprocess() in-process (1 worker unless given); checks report.json matches."""
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress_seconds", 60.0)
    report = pre.preprocess(inp, out, **kwargs)
    assert json.loads((out / "report" / "report.json").read_text()) == report
    assert json.loads((out / "report" / "classes.json").read_text()) == report["classes"]
    return report


def manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "report" / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def output_counts(out: Path) -> dict[str, dict[str, int]]:
    """Files actually on disk per split and class."""
    return {split: {d.name: len(list(d.iterdir())) for d in sorted((out / split).iterdir())}
            for split in ("train", "valid", "test")}


def decoded_hash(path: Path) -> str:
    with Image.open(path) as image:
        return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()


def hashes_by_split(out: Path) -> dict[str, set[str]]:
    """Pixel hashes of the output files, computed independently of the step."""
    return {split: {decoded_hash(p) for p in factory.image_files(out / split)} for split in ("train", "valid", "test")}


def output_of(out: Path, source: str) -> Path:
    rows = [r for r in manifest(out) if r["source"] == source]
    assert len(rows) == 1, source
    return out / rows[0]["split"] / rows[0]["class"] / rows[0]["file"]


# ----------------------------------------------------------------------------- layouts


def test_flat_layout_is_split_stratified_per_class(tmp_path):
    factory.write_tree(tmp_path / "in", {"a": 20, "b": 30, "c": 10})
    out = tmp_path / "out"
    report = run(tmp_path / "in", out, valid_ratio=0.1, test_ratio=0.2)

    expected = {"train": {"a": 14, "b": 21, "c": 7}, "valid": {"a": 2, "b": 3, "c": 1},
                "test": {"a": 4, "b": 6, "c": 2}}
    assert report["layout"] == "flat"
    assert report["classes"] == ["a", "b", "c"]
    assert report["counts"] == expected
    assert output_counts(out) == expected
    assert report["totals"] == {"train": 42, "valid": 6, "test": 12, "images": 60, "files_seen": 60,
                                "image_files": 60, "skipped": 0, "duplicates_dropped": 0, "hidden_ignored": 0}
    rows = manifest(out)
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)) == 60  # every input image exactly once
    assert all(r["source"].startswith(r["class"] + "/") for r in rows)  # labels kept


def test_presplit_layout_under_top_folder_with_val_alias(tmp_path):
    top = tmp_path / "in" / "dogImages"
    classes = ["001.Affenpinscher", "002.Afghan_hound"]
    for split, count in (("train", 5), ("val", 2), ("test", 3)):
        for name in classes:
            factory.write_class_images(top / split, name, count, ".jpg", prefix=split)
    (tmp_path / "in" / ".DS_Store").write_bytes(b"\0")
    factory.write_text(tmp_path / "in" / "__MACOSX" / "dogImages" / "._train")
    out = tmp_path / "out"
    report = run(tmp_path / "in", out, valid_ratio=0.5, test_ratio=0.4)  # ratios unused: splits given

    assert report["layout"] == "train/valid/test"
    assert report["dataset_root"] == "dogImages"
    assert report["split_dirs"] == {"train": "dogImages/train", "valid": "dogImages/val", "test": "dogImages/test"}
    assert report["classes"] == classes
    expected = {"train": dict.fromkeys(classes, 5), "valid": dict.fromkeys(classes, 2),
                "test": dict.fromkeys(classes, 3)}
    assert report["counts"] == expected == output_counts(out)
    assert report["totals"]["hidden_ignored"] == 2
    for row in manifest(out):  # each image stays in its given split, RGB JPEGs copied untouched
        assert row["source"].split("/")[1] == {"valid": "val"}.get(row["split"], row["split"])
        assert (out / row["split"] / row["class"] / row["file"]).read_bytes() == (tmp_path / "in" / row["source"]).read_bytes()
    assert report["copied_unchanged"] == 20


def test_seg_layout_unwraps_nested_folders_and_carves_valid(tmp_path):
    data = tmp_path / "in" / "data"
    for i in range(20):  # redundant class/class nesting as in some zips
        factory.write_image(data / "seg_train" / "seg_train" / "buildings" / "buildings" / f"{i}.jpg", key=f"b{i}")
    factory.write_class_images(data / "seg_train" / "seg_train", "forest", 20, ".jpg")
    for name in ("buildings", "forest"):
        factory.write_class_images(data / "seg_test" / "seg_test", name, 4, ".jpg", prefix="t")
    for i in range(3):
        factory.write_image(data / "seg_pred" / "seg_pred" / f"{i}.jpg", key=f"pred{i}")
    factory.write_text(data / "__MACOSX" / "seg_train" / "._x.jpg")
    factory.write_text(data / "seg_train" / "seg_train" / "forest" / ".DS_Store")
    out = tmp_path / "out"
    report = run(tmp_path / "in", out, valid_ratio=0.1)

    assert report["layout"] == "train/test"
    assert report["split_dirs"] == {"train": "data/seg_train/seg_train", "test": "data/seg_test/seg_test"}
    assert report["classes"] == ["buildings", "forest"]
    assert report["ignored_dirs"] == [{"path": "data/seg_pred", "reason": "unlabelled folder (no classes)"}]
    expected = {"train": {"buildings": 18, "forest": 18}, "valid": {"buildings": 2, "forest": 2},
                "test": {"buildings": 4, "forest": 4}}
    assert report["counts"] == expected == output_counts(out)
    assert report["totals"]["hidden_ignored"] == 2
    # valid is carved out of seg_train only; test is exactly seg_test
    rows = manifest(out)
    assert all("/seg_test/" in r["source"] for r in rows if r["split"] == "test")
    assert all("/seg_train/" in r["source"] for r in rows if r["split"] != "test")
    carved = {r["file"] for r in rows if r["class"] == "buildings" and r["split"] != "test"}
    assert carved == {f"{i}.jpg" for i in range(20)}  # nested class folder unwrapped: no 'buildings__'


# ----------------------------------------------------------------------------- messy files


def write_messy_tree(root: Path) -> None:
    cat = root / "cat"
    factory.write_class_images(root, "cat", 6)
    factory.write_class_images(root, "dog", 6)
    factory.write_corrupt_png(cat / "corrupt.png")
    factory.write_truncated(cat / "truncated.jpg")
    factory.write_empty(cat / "empty.jpg")
    factory.write_text(cat / "text.jpg")
    factory.write_text(cat / "notes.txt")
    factory.write_image(cat / "bomb.png", size=(200, 100))
    factory.write_image(cat / "cmyk.jpg", mode="CMYK")
    factory.write_image(cat / "gray16.png", mode="I;16")
    factory.write_image(cat / "rgba.png", mode="RGBA")
    factory.write_image(cat / "palette.png", mode="P")
    factory.write_image(cat / "gray.jpg", mode="L")
    factory.write_image(cat / "la.png", mode="LA")
    factory.write_text(root / "README.md")
    (cat / ".DS_Store").write_bytes(b"\0\1")


def test_messy_tree_exact_report(tmp_path):
    write_messy_tree(tmp_path / "in")
    out = tmp_path / "out"
    report = run(tmp_path / "in", out, max_image_pixels=5000)

    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        ("README.md", "not_in_class_folder"),
        ("cat/bomb.png", "decompression_bomb"),
        ("cat/corrupt.png", "corrupt"),
        ("cat/empty.jpg", "empty_file"),
        ("cat/notes.txt", "unsupported_type"),
        ("cat/text.jpg", "not_an_image"),
        ("cat/truncated.jpg", "truncated"),
    ]
    assert report["skipped_by_reason"] == {"corrupt": 1, "decompression_bomb": 1, "empty_file": 1,
                                           "not_an_image": 1, "not_in_class_folder": 1, "truncated": 1,
                                           "unsupported_type": 1}
    assert report["conversions"] == {"CMYK": 1, "I;16": 1, "L": 1, "LA": 1, "P": 1, "RGBA": 1}
    assert report["output_formats"] == {"jpeg": 2, "png": 16}
    expected = {"train": {"cat": 10, "dog": 4}, "valid": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1}}
    assert report["counts"] == expected == output_counts(out)
    totals = report["totals"]
    assert (totals["files_seen"], totals["image_files"], totals["skipped"], totals["images"],
            totals["hidden_ignored"]) == (25, 23, 7, 18, 1)
    outputs = factory.image_files(out)
    assert len(outputs) == 18 and set(factory.open_all_rgb(outputs)) == {"RGB"}
    assert output_of(out, "cat/cmyk.jpg").suffix == ".jpg"
    assert output_of(out, "cat/gray16.png").suffix == ".png"


def test_pixels_are_converted_correctly(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"x": 3, "y": 3})
    values = np.array([[0, 128, 129, 257, 32896, 65279, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(inp / "x" / "g16.png")
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba).save(inp / "x" / "rgba.png")
    palette = Image.new("P", (2, 1))
    palette.putdata([0, 1])
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.save(inp / "x" / "pal.png", transparency=0)  # index 0 transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(factory.pixels("exif", (12, 10))).save(inp / "y" / "rotated.jpg", exif=exif)
    out = tmp_path / "out"
    report = run(inp, out, valid_ratio=0.0, test_ratio=0.0)

    gray = np.asarray(Image.open(output_of(out, "x/g16.png")))
    assert gray[0, :, 0].tolist() == [0, 0, 1, 1, 128, 254, 255, 4]  # round(v / 257), full range kept
    assert np.asarray(Image.open(output_of(out, "x/rgba.png"))).tolist() == [[[255, 255, 255], [0, 0, 255], [127, 127, 127]]]
    assert np.asarray(Image.open(output_of(out, "x/pal.png"))).tolist() == [[[255, 255, 255], [40, 50, 60]]]
    rotated = output_of(out, "y/rotated.jpg")
    assert Image.open(rotated).size == (10, 12)
    assert report["exif_rotated"] == 1 and report["copied_unchanged"] == 0
    assert report["counts"]["valid"] == {"x": 0, "y": 0} and list((out / "valid").iterdir()) == []


@pytest.mark.parametrize("mode, array, expected", [
    ("I", np.array([[0, 65535, 257]], dtype=np.int32), [0, 255, 1]),  # 16-bit data in 32-bit mode
    ("I", np.array([[-10, 50000, 100000]], dtype=np.int32), [0, 127, 255]),  # beyond 16 bit: min-max
    ("F", np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),
])
def test_to_rgb_scales_high_bit_depth(mode, array, expected):
    image = Image.fromarray(array)
    assert image.mode == mode
    rgb = pre.to_rgb(image)
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, :, 0].tolist() == expected


# ----------------------------------------------------------------------------- duplicates


def test_flat_duplicates_are_grouped_and_never_leak(tmp_path):
    inp = tmp_path / "in"
    a = factory.write_class_images(inp, "a", 12)
    b = factory.write_class_images(inp, "b", 12)
    for i in range(4):
        (inp / "a" / f"copy_{i}.png").write_bytes(a[i].read_bytes())  # byte copy
        factory.copy_pixels(a[i], inp / "a" / f"re_{i}.bmp")  # same pixels, other format
    for i in range(3):
        (inp / "a" / f"from_b_{i}.png").write_bytes(b[i].read_bytes())  # same image labelled a and b
    out = tmp_path / "out"
    report = run(inp, out, valid_ratio=0.25, test_ratio=0.25)

    dups = report["duplicates"]
    assert (dups["groups"], dups["dropped"], dups["label_conflicts"]) == (7, 8, 3)
    assert sorted(d["reason"] for g in dups["details"] for d in g["dropped"]) == ["copy_in_same_class"] * 8
    assert report["counts"] == {"train": {"a": 7, "b": 6}, "valid": {"a": 4, "b": 3}, "test": {"a": 4, "b": 3}}
    hashes = hashes_by_split(out)
    assert len(factory.image_files(out)) == 27
    assert sum(len(h) for h in hashes.values()) == 24  # each label-conflict pair shares its pixels
    assert not (hashes["train"] & hashes["test"] or hashes["train"] & hashes["valid"] or hashes["valid"] & hashes["test"])
    split_of = {r["source"]: r["split"] for r in manifest(out)}
    assert all(split_of[f"a/from_b_{i}.png"] == split_of[f"b/img_{i:03d}.png"] for i in range(3))


def test_presplit_duplicates_are_dropped_from_valid_and_test(tmp_path):
    inp = tmp_path / "in"
    for split, count in (("train", 6), ("valid", 2), ("test", 3)):
        for name in ("a", "b"):
            factory.write_class_images(inp / split, name, count, prefix=split)
    factory.copy_pixels(inp / "train" / "a" / "train_000.png", inp / "test" / "a" / "leak.bmp")
    (inp / "valid" / "b" / "leak.png").write_bytes((inp / "train" / "b" / "train_001.png").read_bytes())
    (inp / "test" / "b" / "from_valid.png").write_bytes((inp / "valid" / "b" / "valid_000.png").read_bytes())
    (inp / "test" / "a" / "wrong_label.png").write_bytes((inp / "train" / "b" / "train_002.png").read_bytes())
    out = tmp_path / "out"
    report = run(inp, out)

    dropped = sorted((d["path"], d["reason"], d["duplicate_of"]) for g in report["duplicates"]["details"]
                     for d in g["dropped"])
    assert dropped == [
        ("test/a/leak.bmp", "copy_of_train_image", "train/a/train_000.png"),
        ("test/a/wrong_label.png", "copy_of_train_image", "train/b/train_002.png"),
        ("test/b/from_valid.png", "copy_of_valid_image", "valid/b/valid_000.png"),
        ("valid/b/leak.png", "copy_of_train_image", "train/b/train_001.png"),
    ]
    expected = {"train": {"a": 6, "b": 6}, "valid": {"a": 2, "b": 2}, "test": {"a": 3, "b": 3}}
    assert report["counts"] == expected == output_counts(out)
    hashes = hashes_by_split(out)
    assert not (hashes["train"] & hashes["test"] or hashes["train"] & hashes["valid"] or hashes["valid"] & hashes["test"])


# ----------------------------------------------------------------------------- errors


def test_too_few_images_fails_naming_the_class(tmp_path, failure_file, capsys):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 10, "b": 2, "c": 3})
    factory.write_corrupt_png(inp / "b" / "broken.png")
    out = tmp_path / "out"
    status = pre.main(["--input-dir", str(inp), "--output-dir", str(out), "--workers", "1"])

    assert status == 1
    message = failure_file.read_text()
    assert "class 'b': 2 usable images (minimum 3); no train images (train=0, valid=1, test=1, 1 files skipped)" in message
    assert "'a'" not in message and "'c'" not in message  # c: 3 images give 1/1/1
    stderr = capsys.readouterr().err
    assert message.strip() in stderr and "Traceback" not in stderr
    assert not (out / "train").exists() and not (out / ".staging").exists()


@pytest.mark.parametrize("tree, match", [
    ({"train/a": 3, "train/b": 3, "test/a": 3}, r"test/ lacks \['b'\]"),
    ({"train/a": 3, "train/b": 3, "cats": 3}, r"mixed layout .* other folders \['cats'\]"),
    ({"only": 5}, r"only one class folder found \('only'\)"),
    ({"test/a": 3, "test/b": 3}, r"no train folder"),
])
def test_layout_errors_are_clear(tmp_path, tree, match):
    for folder, count in tree.items():
        factory.write_class_images(tmp_path / "in", folder, count)
    with pytest.raises(pre.PreprocessError, match=match):
        pre.preprocess(tmp_path / "in", tmp_path / "out", workers=1)


def test_output_inside_input_is_refused(tmp_path):
    factory.write_tree(tmp_path / "in", {"a": 3, "b": 3})
    with pytest.raises(pre.PreprocessError, match="must not contain each other"):
        pre.preprocess(tmp_path / "in", tmp_path / "in" / "out", workers=1)


# ----------------------------------------------------------------------------- other behaviour


def test_script_runs_as_subprocess(tmp_path, failure_file):
    factory.write_tree(tmp_path / "in", {"a": 10, "b": 10})
    out = tmp_path / "out"
    ok = subprocess.run([sys.executable, str(SCRIPT), "--input-dir", str(tmp_path / "in"), "--output-dir", str(out),
                         "--workers", "2", "--seed", "7"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "progress: decoded 20/20 (100%)" in ok.stdout and "done: train=16 valid=2 test=2" in ok.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["parameters"]["workers"] == 2 and report["parameters"]["seed"] == 7

    bad = subprocess.run([sys.executable, str(SCRIPT), "--input-dir", str(tmp_path / "in"), "--output-dir",
                          str(tmp_path / "out2"), "--valid-ratio", "0.6", "--test-ratio", "0.5"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert failure_file.read_text().startswith("PrepareData failed: ratios must be in [0, 1) with valid + test < 1")


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    factory.write_tree(tmp_path / "in", {"a": 15, "b": 15, "c": 15})
    runs = {name: run(tmp_path / "in", tmp_path / name, seed=seed, workers=workers)
            for name, seed, workers in (("one", 1, 1), ("two", 1, 2), ("other", 2, 1))}

    def comparable(report):
        return {k: v for k, v in report.items() if k not in ("output_dir", "elapsed_seconds", "parameters")}

    def tree(out):
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
                and p.name != "report.json"}

    assert comparable(runs["one"]) == comparable(runs["two"])
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert manifest(tmp_path / "one") != manifest(tmp_path / "other")  # the seed matters
    assert runs["one"]["counts"] == runs["other"]["counts"]


def test_max_image_side_downscales_large_images(tmp_path):
    inp = tmp_path / "in"
    factory.write_tree(inp, {"a": 3, "b": 3})
    factory.write_image(inp / "a" / "big.jpg", size=(64, 48))
    factory.write_image(inp / "b" / "wide.png", size=(40, 10))
    out = tmp_path / "out"
    report = run(inp, out, max_image_side=16)

    assert Image.open(output_of(out, "a/big.jpg")).size == (16, 12)
    assert Image.open(output_of(out, "b/wide.png")).size == (16, 4)
    assert Image.open(output_of(out, "a/img_000.png")).size == factory.SIZE  # small ones untouched
    assert report["resized"] == 2


def test_output_names_never_collide(tmp_path):
    inp = tmp_path / "in"
    names = ["x.jpg", "x.jpeg", "X.png", "x.gif", "x.png", "sub/x.jpg"]
    for name in names:
        factory.write_image(inp / "train" / "a" / name)
    for split in ("train", "valid", "test"):
        for name in ("a", "b"):
            factory.write_class_images(inp / split, name, 1, prefix=split)
    out = tmp_path / "out"
    run(inp, out)

    files = sorted(p.name for p in (out / "train" / "a").iterdir())
    assert len(files) == len(names) + 1 and len({f.lower() for f in files}) == len(files)
    assert {"X.png", "x.jpg", "sub__x.jpg", "train_000.png"} <= set(files)
    sources = {r["source"]: r for r in manifest(out)}
    assert {f"train/a/{n}" for n in names} <= set(sources)
    for name in names:  # each source landed in its own file with its own pixels
        assert decoded_hash(output_of(out, f"train/a/{name}")) == decoded_hash(inp / "train" / "a" / name)


def test_write_errors_fail_the_job_instead_of_skipping_images(tmp_path, monkeypatch, failure_file):
    factory.write_tree(tmp_path / "in", {"a": 3, "b": 3})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pre, "stage", disk_full)
    status = pre.main(["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--workers", "1"])
    assert status == 1
    assert "No space left on device" in failure_file.read_text()
    assert not (tmp_path / "out" / ".staging").exists()
