"""学习者自己的照片文件夹：各种格式、坏文件、系统垃圾文件、奇怪的文件夹结构和不合理的划分。

所有图像都由测试生成。能解码的图像必须全部用上，坏文件逐个跳过并各警告一次，
数据有问题时要在训练开始（新建运行文件夹）之前报出中文的 DataError。
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import re

import numpy as np
import pytest
import torch
from conftest import CLASS_COLORS, make_image, make_image_folder, run_folders, tiny_config
from PIL import Image

from visionft.data import (DataError, ImageListDataset, build_transforms, check_image, collate_skip_bad, load_image,
                           scan_image_folder)
from visionft.evaluate import compute_metrics
from visionft.io import read_json

train_module = importlib.import_module("visionft.train")
CJK = re.compile(r"[\u4e00-\u9fff]")


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_truncated_jpeg(path) -> None:
    path.write_bytes(jpeg_bytes(make_image((200, 60, 60), size=(64, 64), seed=11), quality=95))
    truncate(path)


def write_exif_rotated_jpeg(path, width=30, height=20) -> None:
    """宽 width、高 height 的 JPEG，EXIF orientation 6：正确显示时要顺时针转 90°，变成高 width、宽 height。"""
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image((200, 60, 60), size=(width, height), seed=12).save(path, exif=exif)


def mode_images() -> dict[str, Image.Image]:
    """各种 PIL 模式的小图，文件名 -> 图像。"""
    rgb = make_image((60, 160, 200), size=(24, 24), seed=13)
    palette_clear = rgb.convert("P")
    palette_clear.info["transparency"] = 0
    sixteen_bit = Image.fromarray((np.arange(24 * 24, dtype=np.uint16) * 100).reshape(24, 24))
    return {
        "gray.png": rgb.convert("L"),
        "gray_alpha.png": rgb.convert("LA"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "palette_transparent.png": palette_clear,
        "sixteen_bit.png": sixteen_bit,
    }


def build_messy_folder(root):
    """生成一个乱七八糟但能用的数据文件夹，返回 (root, 可用图像的相对路径集合, 坏文件的相对路径集合)。

    类别：amber（各种格式）、berry（坏文件与垃圾文件）、中华田园犬（中文名、嵌套子文件夹）。
    empty_breed 是空文件夹，.ipynb_checkpoints 是隐藏文件夹，都不能成为类别。
    """
    make_image_folder(root, classes=("amber", "berry", "中华田园犬"), per_class=6)
    amber, berry, chinese = root / "amber", root / "berry", root / "中华田园犬"

    # amber：各种模式、格式和尺寸
    for name, image in mode_images().items():
        image.save(amber / name)
    make_image((60, 160, 200), seed=14).save(amber / "really_png.jpg", format="PNG")
    Image.new("CMYK", (24, 24), (10, 200, 30, 0)).save(amber / "cmyk.jpg")
    make_image((60, 160, 200), size=(1, 300), seed=15).save(amber / "strip.png")
    Image.new("RGB", (4000, 3000), CLASS_COLORS[0]).save(amber / "huge.jpg", quality=50)
    write_exif_rotated_jpeg(amber / "rotated.jpg")

    # berry：坏文件和不是图像的文件
    write_truncated_jpeg(berry / "truncated.jpg")
    (berry / "empty.jpg").write_bytes(b"")
    (berry / "notes.txt").write_text("not an image", encoding="utf-8")
    (berry / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (berry / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    for folder in (root / ".ipynb_checkpoints", berry / ".ipynb_checkpoints"):
        folder.mkdir()
        make_image((0, 0, 0), seed=16).save(folder / "checkpoint.jpg")

    # 中华田园犬：中文文件名、嵌套子文件夹
    nested = chinese / "2024" / "夏天"
    nested.mkdir(parents=True)
    make_image(CLASS_COLORS[2], seed=17).save(nested / "小黑.jpg")
    make_image(CLASS_COLORS[2], seed=18).save(chinese / "大黄.png")

    (root / "empty_breed").mkdir()

    usable = {path.relative_to(root).as_posix() for path in root.rglob("*")
              if path.is_file() and ".ipynb_checkpoints" not in path.parts
              and path.suffix in (".jpg", ".png") and path.name not in ("truncated.jpg", "empty.jpg")}
    bad = {"berry/truncated.jpg", "berry/empty.jpg"}
    return root, usable, bad


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    return build_messy_folder(tmp_path_factory.mktemp("messy") / "data")


@pytest.fixture(scope="module")
def messy_scan(messy_folder):
    """扫描一次乱文件夹，连同扫描期间 visionft 发出的日志记录。"""
    root, _, _ = messy_folder
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("visionft")
    logger.addHandler(handler)
    try:
        scan = scan_image_folder(root)
    finally:
        logger.removeHandler(handler)
    return scan, records


# ---------------------------------------------------------------------------
# 单张图像的读取


@pytest.mark.parametrize("name", sorted(mode_images()))
def test_load_image_mode_to_rgb(tmp_path, name):
    path = tmp_path / name
    mode_images()[name].save(path)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.size == (24, 24)


def test_load_image_transparent_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)

    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_load_image_sixteen_bit_scaled(tmp_path):
    path = tmp_path / "white16.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)

    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_load_image_exif_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    write_exif_rotated_jpeg(path, width=30, height=20)

    assert Image.open(path).size == (30, 20)
    assert load_image(path).size == (20, 30)


def test_load_image_png_named_jpg(tmp_path):
    path = tmp_path / "really_png.jpg"
    make_image((1, 2, 3)).save(path, format="PNG")

    assert load_image(path).mode == "RGB"


def test_load_image_cmyk(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(path)
    image = load_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((4, 4)) == pytest.approx((255, 255, 255), abs=3)


@pytest.mark.parametrize("writer", [write_truncated_jpeg, lambda path: path.write_bytes(b"")], ids=["truncated", "empty"])
def test_load_image_bad_file_raises(tmp_path, writer):
    from visionft.data import ImageDecodeError

    path = tmp_path / "bad.jpg"
    writer(path)

    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path)

    assert "bad.jpg" in str(excinfo.value)


def test_check_image_truncated(tmp_path):
    path = tmp_path / "truncated.jpg"
    write_truncated_jpeg(path)

    assert check_image(path) is not None


# ---------------------------------------------------------------------------
# 扫描乱文件夹


def test_scan_classes(messy_scan):
    scan, _ = messy_scan

    assert scan.classes == ["amber", "berry", "中华田园犬"]


def test_scan_uses_every_decodable_image(messy_folder, messy_scan):
    _, usable, _ = messy_folder
    scan, _ = messy_scan

    assert {path for path, _ in scan.samples} == usable


def test_scan_labels_follow_top_folder(messy_scan):
    scan, _ = messy_scan

    for path, label in scan.samples:
        assert scan.classes[label] == path.split("/")[0], path


def test_scan_skips_bad_files(messy_folder, messy_scan):
    _, _, bad = messy_folder
    scan, _ = messy_scan

    assert {path for path, _ in scan.skipped} == bad


def test_scan_warns_once_per_bad_file(messy_folder, messy_scan):
    _, _, bad = messy_folder
    _, records = messy_scan
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]

    for path in bad:
        assert sum(path in message for message in warnings) == 1, path


def test_scan_no_warning_for_junk(messy_scan):
    _, records = messy_scan
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]

    for name in ("notes.txt", ".DS_Store", "Thumbs.db", "checkpoint.jpg"):
        assert not any(name in message for message in warnings), name


def test_scan_reports_empty_class(messy_scan):
    scan, records = messy_scan
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]

    assert scan.empty_classes == ["empty_breed"]
    assert any("empty_breed" in message for message in warnings)


def test_scan_warning_reaches_caplog(visionft_log, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    (root / "a" / "empty.jpg").write_bytes(b"")

    scan_image_folder(root)
    messages = [record.getMessage() for record in visionft_log.records if record.levelno == logging.WARNING]

    assert sum("a/empty.jpg" in message for message in messages) == 1


@pytest.fixture(scope="module")
def messy_run(messy_folder, tiny_model_dir, tmp_path_factory):
    root, _, _ = messy_folder
    output = tmp_path_factory.mktemp("messy-runs")
    config = tiny_config(tiny_model_dir("dinov2"), root, output, val_fraction=0.2, test_fraction=0.2)
    return train_module.train(config)


def test_messy_run_completes(messy_run):
    assert (messy_run.run_dir / "results.json").is_file()


def test_messy_run_counts_skipped(messy_run):
    assert read_json(messy_run.run_dir / "results.json")["skipped_images"] == 2


def test_messy_run_split_lists_skipped(messy_folder, messy_run):
    _, _, bad = messy_folder
    split = read_json(messy_run.run_dir / "split.json")

    assert {item["path"] for item in split["skipped"]} == bad


# ---------------------------------------------------------------------------
# 扫描之后才坏掉的图像


def test_dataset_item_none_after_truncation(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("a",), per_class=2)
    samples = [("a/000.jpg", 0), ("a/001.png", 0)]
    dataset = ImageListDataset(root, samples, build_transforms(16, (0.5,) * 3, (0.5,) * 3, train=False))
    truncate(root / "a" / "000.jpg", keep=0.3)

    assert dataset[0] == (None, "a/000.jpg")
    assert dataset.failed == {"a/000.jpg"}


def test_dataset_warns_once_per_file(visionft_log, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("a",), per_class=1)
    dataset = ImageListDataset(root, [("a/000.jpg", 0)], build_transforms(16, (0.5,) * 3, (0.5,) * 3, train=False))
    truncate(root / "a" / "000.jpg", keep=0.3)

    for _ in range(3):
        dataset[0]
    warnings = [record for record in visionft_log.records if record.levelno == logging.WARNING]

    assert len(warnings) == 1
    assert "a/000.jpg" in warnings[0].getMessage()


def test_collate_drops_bad_items():
    item = (torch.zeros(3, 4, 4), 1)

    batch = collate_skip_bad([(None, "a/1.jpg"), item, (None, "a/2.jpg"), item])

    assert batch.images.shape == (2, 3, 4, 4)
    assert batch.labels.tolist() == [1, 1]
    assert batch.failed == ["a/1.jpg", "a/2.jpg"]


def test_collate_all_bad_empty():
    batch = collate_skip_bad([(None, "a/1.jpg"), (None, "a/2.jpg")])

    assert batch.images is None
    assert batch.labels is None
    assert batch.failed == ["a/1.jpg", "a/2.jpg"]


@pytest.mark.parametrize(
    "num_workers",
    [0, 1],
)
def test_truncated_after_scan_not_fatal(tiny_model_dir, tmp_path, monkeypatch, num_workers):
    data = make_image_folder(tmp_path / "data", per_class=8)
    original_scan = train_module.data_lib.scan_image_folder

    def scan_then_truncate(*args, **kwargs):
        scan = original_scan(*args, **kwargs)
        truncate(data / "cat_b" / "002.jpg", keep=0.3)
        return scan

    monkeypatch.setattr(train_module.data_lib, "scan_image_folder", scan_then_truncate)
    config = tiny_config(tiny_model_dir("dinov2"), data, tmp_path / "runs", num_workers=num_workers)

    result = train_module.train(config)

    assert result.results["skipped_images"] == 1


def test_cli_evaluate_data_gone(tiny_model_dir, tmp_path, capsys):
    import shutil

    from visionft.cli import main

    data = make_image_folder(tmp_path / "data", per_class=8)
    result = train_module.train(tiny_config(tiny_model_dir("dinov2"), data, tmp_path / "runs"))
    shutil.rmtree(data)

    code = main(["evaluate", str(result.run_dir)])

    assert code == 2
    assert "data" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# 划分：训练集里缺类别、极少的类别


def write_split_lists(folder, train: list[str], test: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (folder / "test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    return folder


def test_class_only_in_test_rejected(tiny_model_dir, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    files = sorted(path.relative_to(data).as_posix() for path in data.rglob("*.*"))
    train = [name for name in files if not name.startswith("cat_c/") and not name.endswith("005.png")]
    test = [name for name in files if name not in train]
    splits = write_split_lists(tmp_path / "splits", train, test)
    output = tmp_path / "runs"
    config = tiny_config(tiny_model_dir("dinov2"), data, output, split_dir=str(splits))

    with pytest.raises(DataError) as excinfo:
        train_module.train(config)

    assert "cat_c" in str(excinfo.value)
    assert CJK.search(str(excinfo.value))
    assert run_folders(output) == []


def test_official_split_used_when_complete(tiny_model_dir, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    files = sorted(path.relative_to(data).as_posix() for path in data.rglob("*.*"))
    test = [name for name in files if name.endswith(("006.jpg", "007.png"))]
    splits = write_split_lists(tmp_path / "splits", [name for name in files if name not in test], test)
    config = tiny_config(tiny_model_dir("dinov2"), data, tmp_path / "runs", split_dir=str(splits))

    result = train_module.train(config)
    split = read_json(result.run_dir / "split.json")

    assert split["source"] == "official"
    assert sorted(split["test"]) == test


@pytest.fixture(scope="module")
def imbalanced_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalanced")
    data = make_image_folder(root / "data", per_class={"cat_a": 16, "cat_b": 16, "cat_c": 1})
    config = tiny_config(tiny_model_dir("dinov2"), data, root / "runs")
    return train_module.train(config)


def test_single_image_class_in_train(imbalanced_run):
    split = read_json(imbalanced_run.run_dir / "split.json")

    assert [path for path in split["train"] if path.startswith("cat_c/")] == ["cat_c/000.jpg"]


def test_report_lists_every_class(imbalanced_run):
    metrics = read_json(imbalanced_run.run_dir / "evaluation" / "test" / "metrics.json")

    for name in metrics["class_names"]:
        assert name in metrics["report"], name
    assert len(metrics["class_names"]) == 3


def test_confusion_matrix_full_size(imbalanced_run):
    metrics = read_json(imbalanced_run.run_dir / "evaluation" / "test" / "metrics.json")

    assert np.asarray(metrics["confusion_matrix"]).shape == (3, 3)


def test_compute_metrics_absent_class():
    metrics = compute_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"])

    assert "c" in metrics["report"]
    assert len(metrics["confusion_matrix"]) == 3


def test_small_classes_keep_one_val_image(tiny_model_dir, tmp_path):
    # 每类 5 张：先分出 1 张测试图，剩下 4 张里 round(4 × 0.1) = 0，划分规则仍为每类留 1 张验证图
    data = make_image_folder(tmp_path / "data", per_class=5)
    config = tiny_config(tiny_model_dir("dinov2"), data, tmp_path / "runs", val_fraction=0.1, test_fraction=0.2)

    result = train_module.train(config)

    split = json.loads((result.run_dir / "split.json").read_text(encoding="utf-8"))
    assert len(split["val"]) == 3
    assert len(split["test"]) == 3


def test_empty_val_set_rejected_before_run(tiny_model_dir, tmp_path):
    # 每类 2 张：1 张测试、1 张训练，分不出验证图
    data = make_image_folder(tmp_path / "data", per_class=2)
    output = tmp_path / "runs"
    config = tiny_config(tiny_model_dir("dinov2"), data, output, val_fraction=0.1, test_fraction=0.2, batch_size=1)

    with pytest.raises(DataError, match="验证集是空的"):
        train_module.train(config)

    assert run_folders(output) == []


# ---------------------------------------------------------------------------
# 数据文件夹本身有问题


def missing_folder(root):
    return root


def empty_folder(root):
    root.mkdir()
    return root


def no_images_folder(root):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "readme.txt").write_text("no images here", encoding="utf-8")
    return root


def loose_images_folder(root):
    root.mkdir()
    make_image((1, 2, 3)).save(root / "loose.jpg")
    return root


@pytest.mark.parametrize(
    "make_folder",
    [missing_folder, empty_folder, no_images_folder, loose_images_folder],
    ids=["missing", "empty", "no-images", "no-class-folders"],
)
def test_bad_data_folder_rejected(tiny_model_dir, tmp_path, make_folder):
    data = make_folder(tmp_path / "data")
    output = tmp_path / "runs"
    config = tiny_config(tiny_model_dir("dinov2"), data, output)

    with pytest.raises(DataError) as excinfo:
        train_module.train(config)

    assert CJK.search(str(excinfo.value))
    assert run_folders(output) == []


def test_data_file_not_folder_rejected(tmp_path):
    path = tmp_path / "photo.jpg"
    make_image((1, 2, 3)).save(path)

    with pytest.raises(DataError):
        scan_image_folder(path)


def test_cli_missing_data_exit_2(tiny_model_dir, tmp_path, capsys):
    import yaml

    from visionft.cli import main

    config = {"model": str(tiny_model_dir("dinov2")), "data_dir": str(tmp_path / "missing"),
              "output_dir": str(tmp_path / "runs"), "progress": "none"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    code = main(["train", "--config", str(path)])
    stderr = capsys.readouterr().err

    assert code == 2
    assert "missing" in stderr
    assert run_folders(tmp_path / "runs") == []
