"""数据：扫描 ImageFolder、划分训练/验证/测试集、安全地读取图像、构建 DataLoader。

学习者会带来各种照片：截断的 JPEG、空文件、改了扩展名的 PNG、CMYK、16 位灰度、
带透明通道、EXIF 旋转、巨大的或细长的图……能解码的都转成方向正确的 RGB 使用；
不能解码的跳过，每个文件警告一次，最后报告跳过了多少个。
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from .breeds import display_name, english_name, chinese_name
from .io import display_path

logger = logging.getLogger("visionft")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}
# 系统和工具留下的文件：不是图像，也不值得警告
IGNORED_FILE_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# 截断的 JPEG 不补灰继续读，而是当作坏文件跳过（PIL 的默认行为，这里写明以免被别处改掉）
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DataError(ValueError):
    """数据文件夹或划分有问题，训练无法开始。"""


class ImageDecodeError(OSError):
    """一张图像无法解码。"""


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def load_image(path: str | Path) -> Image.Image:
    """读取一张图像，按 EXIF 转正，转成 RGB；无法解码时抛出 ImageDecodeError。"""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path.name} 是空文件（0 字节）")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 例如 PIL 对 EXIF 数据或调色板透明度的提示
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{path.name} 无法解码：{describe_decode_error(error)}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """把任意模式的 PIL 图像转成 RGB：透明部分铺白底，16 位灰度按比例缩到 8 位。"""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            high = 65535.0
        elif image.mode == "F" and array.max() <= 1.0:
            high = 1.0  # 浮点图像常见的 [0, 1] 取值
        else:
            high = 255.0
        array = np.clip(array / high * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


_PIL_MESSAGES = (
    ("cannot identify image file", "无法识别的图像格式：文件可能不是图像，或扩展名与内容不符"),
    ("image file is truncated", "图像文件被截断：下载或复制可能不完整"),
    ("broken data stream", "图像数据损坏"),
    ("exceeds limit", "图像像素数超过安全上限（可能是解压炸弹），已拒绝"),
)


def describe_decode_error(error: BaseException) -> str:
    """把 PIL 常见的英文错误换成中文说明，并保留原文便于搜索。"""
    text = str(error) or type(error).__name__
    for english, chinese in _PIL_MESSAGES:
        if english in text:
            return f"{chinese}（{text}）"
    return text


def check_image(path: Path) -> str | None:
    """完整解码一遍（JPEG 用 draft 模式降采样，快得多）；可用时返回 None，否则返回原因。"""
    try:
        if path.stat().st_size == 0:
            return "空文件（0 字节）"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (64, 64))
                image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return describe_decode_error(error)
    return None


@dataclass
class ImageFolderScan:
    """扫描结果：类别（文件夹名，排序后）、可用的图像、被跳过的文件。"""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]  # (相对 root 的路径, 类别编号)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (相对路径, 原因)
    ignored_files: int = 0
    empty_classes: list[str] = field(default_factory=list)


def _iter_class_files(class_dir: Path) -> Iterator[Path]:
    """按名字顺序列出类别文件夹里（包括嵌套子文件夹）的文件，跳过隐藏的文件夹和文件。"""
    for entry in sorted(class_dir.iterdir(), key=lambda p: p.name):
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            yield from _iter_class_files(entry)
        elif entry.is_file():
            yield entry


def scan_image_folder(root: str | Path, check: bool = True, classes: Sequence[str] | None = None) -> ImageFolderScan:
    """扫描 ImageFolder：每个子文件夹是一个类别，文件夹里的图像（含嵌套子文件夹）是样本。

    `classes` 给定时按这个类别表编号（评估已训练的模型时用），文件夹里多出的类别会报错。
    """
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"找不到数据文件夹：{display_path(root)}。请先运行 python scripts/prepare_dog_dataset.py，"
            "或用 --data_dir 指向每个品种一个子文件夹的图像文件夹。"
        )
    if not root.is_dir():
        raise DataError(f"数据路径 {display_path(root)} 不是文件夹：--data_dir 应当指向每个品种一个子文件夹的图像文件夹。")

    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    loose_images = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not folders:
        extra = f"（文件夹里直接放着 {len(loose_images)} 张图像，但没有按品种分子文件夹）" if loose_images else ""
        raise DataError(
            f"数据文件夹 {display_path(root)} 里没有类别子文件夹{extra}。"
            "ImageFolder 格式要求每个品种一个子文件夹，例如 data/my_dogs/golden_retriever/001.jpg。"
        )
    if loose_images:
        logger.warning("数据文件夹根目录下的 %d 个图像文件不属于任何类别，已忽略（例如 %s）。", len(loose_images), loose_images[0])

    if classes is not None:
        unknown = [name for name in folders if name not in classes]
        if unknown:
            raise DataError(
                f"数据文件夹 {display_path(root)} 里有模型没见过的类别：{', '.join(unknown)}。"
                f"模型认识的类别是：{', '.join(classes)}。"
            )
        class_list = list(classes)
    else:
        class_list = folders
    index = {name: i for i, name in enumerate(class_list)}

    scan = ImageFolderScan(root=root, classes=class_list, samples=[])
    for folder in folders:
        count = 0
        for path in _iter_class_files(root / folder):
            if path.name.lower() in IGNORED_FILE_NAMES or path.suffix.lower() not in IMAGE_EXTENSIONS:
                scan.ignored_files += 1
                continue
            relative = path.relative_to(root).as_posix()
            reason = check_image(path) if check else None
            if reason is not None:
                scan.skipped.append((relative, reason))
                logger.warning("跳过无法解码的图像 %s：%s", relative, reason)
                continue
            scan.samples.append((relative, index[folder]))
            count += 1
        if count == 0:
            scan.empty_classes.append(folder)

    if not scan.samples:
        raise DataError(
            f"数据文件夹 {display_path(root)} 里没有可用的图像（支持 {', '.join(sorted(IMAGE_EXTENSIONS))}；"
            f"跳过了 {len(scan.skipped)} 个无法解码的文件）。请检查 --data_dir。"
        )
    if scan.empty_classes and classes is None:
        # 没有可用图像的文件夹不能成为类别：模型无从学习它
        for name in scan.empty_classes:
            logger.warning("类别文件夹 %s 里没有可用的图像，不作为类别。", name)
        usable_classes = [name for name in class_list if name not in scan.empty_classes]
        remap = {index[name]: i for i, name in enumerate(usable_classes)}
        scan.samples = [(path, remap[label]) for path, label in scan.samples]
        scan.classes = usable_classes
    if scan.ignored_files:
        logger.info("忽略了 %d 个非图像文件（如 .txt、.DS_Store、Thumbs.db）。", scan.ignored_files)
    return scan


# ---------------------------------------------------------------------------
# 划分


@dataclass
class Split:
    """训练/验证/测试三个子集（相对路径与类别编号），以及划分的来源。"""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    source: str  # "official" 或 "stratified"

    @classmethod
    def from_json(cls, saved: dict) -> "Split":
        """从 split.json 的内容重建划分；类别编号按其中的 classes 顺序，由路径的第一级文件夹决定。"""
        index = {name: i for i, name in enumerate(saved["classes"])}

        def labelled(paths: list[str]) -> list[tuple[str, int]]:
            return [(path, index[path.split("/")[0]]) for path in paths]

        return cls(train=labelled(saved["train"]), val=labelled(saved["val"]), test=labelled(saved["test"]),
                   source=saved["source"])

    def to_json(self, scan: ImageFolderScan) -> dict:
        return {
            "source": self.source,
            "classes": scan.classes,
            "train": [path for path, _ in self.train],
            "val": [path for path, _ in self.val],
            "test": [path for path, _ in self.test],
            "skipped": [{"path": path, "reason": reason} for path, reason in scan.skipped],
        }


def find_split_dir(data_dir: Path, split_dir: str | None) -> Path | None:
    """找官方划分文件夹：`auto` 时依次看 <data_dir>/splits 和 <data_dir 的上级>/stanford-dogs-splits。"""
    if split_dir is None:
        return None
    if split_dir != "auto":
        path = Path(split_dir)
        if not (path / "train.txt").is_file() or not (path / "test.txt").is_file():
            raise DataError(f"划分文件夹 {display_path(path)} 里缺少 train.txt 或 test.txt。设为 null 可改用分层随机划分。")
        return path
    for candidate in (data_dir / "splits", data_dir.parent / "stanford-dogs-splits"):
        if (candidate / "train.txt").is_file() and (candidate / "test.txt").is_file():
            return candidate
    return None


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _sample_key(relative: str) -> str:
    """官方列表写的是 `类别文件夹/文件名`；嵌套子文件夹里的图像按 类别/文件名 对应。"""
    parts = relative.split("/")
    return f"{parts[0]}/{parts[-1]}"


def _stratified_take(samples: list[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """每个类别按固定种子打乱后取 round(n × fraction) 个（至少留 1 个在剩余部分），返回 (取出的, 剩余的)。"""
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for sample in sorted(samples):
        by_class[sample[1]].append(sample)
    selected, rest = [], []
    for label in sorted(by_class):
        items = by_class[label]
        random.Random(f"{seed}-{label}").shuffle(items)
        count = int(round(len(items) * fraction))
        if count == 0 and fraction > 0 and len(items) >= 2:
            count = 1  # 小类别也至少留一张给验证/测试，否则这个类别在那里完全看不到
        count = min(count, len(items) - 1)
        selected.extend(items[:count])
        rest.extend(items[count:])
    return sorted(selected), sorted(rest)


def make_split(scan: ImageFolderScan, split_dir: Path | None, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """官方列表覆盖全部图像时用官方 train/test，否则分层随机划分；验证集总是从训练部分里分层抽出。"""
    train_pool, test = None, None
    source = "stratified"
    if split_dir is not None:
        train_names = _read_list(split_dir / "train.txt")
        test_names = _read_list(split_dir / "test.txt")
        keys = {sample: _sample_key(sample[0]) for sample in scan.samples}
        uncovered = [s for s, key in keys.items() if key not in train_names and key not in test_names]
        if uncovered:
            logger.warning(
                "官方划分列表 %s 没有覆盖 %d 张图像（例如 %s），改用分层随机划分。",
                display_path(split_dir), len(uncovered), uncovered[0][0],
            )
        else:
            train_pool = sorted(s for s, key in keys.items() if key in train_names)
            test = sorted(s for s, key in keys.items() if key in test_names)
            source = "official"
    if train_pool is None:
        test, train_pool = _stratified_take(scan.samples, test_fraction, seed)
    val, train = _stratified_take(train_pool, val_fraction, seed + 1)
    split = Split(train=train, val=val, test=test, source=source)
    check_split(split, scan.classes)
    if not split.val:
        raise DataError(
            f"验证集是空的：训练部分只有 {len(train_pool)} 张图像，每个类别都不够分出一张验证图像。"
            "请给每个类别至少准备 3 张照片，或调大 val_fraction。"
        )
    if not split.test:
        raise DataError(
            f"测试集是空的：数据文件夹里只有 {len(scan.samples)} 张图像。请给每个类别至少准备 3 张照片，或调大 test_fraction。"
        )
    return split


def stratified_subset(samples: list[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """按类别轮流取样本，取满 count 个：子集里各类别的比例与原来相近（调试用的小训练集）。"""
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    ranked = sorted(samples, key=lambda s: (by_class[s[1]].index(s), s[1]))
    return sorted(ranked[:count])


def check_split(split: Split, classes: list[str]) -> None:
    """每个类别都必须至少有一张训练图像，否则在训练开始前报错。"""
    train_counts = Counter(label for _, label in split.train)
    missing = [classes[i] for i in range(len(classes)) if train_counts[i] == 0]
    if missing:
        elsewhere = Counter(label for _, label in split.val + split.test)
        details = "、".join(f"{name}（验证/测试里有 {elsewhere[classes.index(name)]} 张）" for name in missing)
        raise DataError(
            f"这些类别在训练集里没有可用的图像：{details}。"
            "请给这些类别补充训练照片，或把它们的文件夹移出数据文件夹。"
        )


# ---------------------------------------------------------------------------
# Dataset 与 DataLoader


def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool) -> transforms.Compose:
    normalize = transforms.Normalize(mean=mean, std=std)
    if train:
        return transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ])
    return transforms.Compose([
        transforms.Resize(image_size, antialias=True),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        normalize,
    ])


class ImageListDataset(Dataset):
    """(路径, 类别) 列表上的数据集。读取失败的图像返回 (None, 路径)，由 collate_skip_bad 丢掉并记下。

    `failed` 记录主进程见到的坏文件：DataLoader 用多个 worker 时，坏文件由 collate 带回主进程，
    训练和评估循环再调用 record_failed 记进来，所以计数不会漏。
    """

    def __init__(self, root: Path, samples: list[tuple[str, int]], transform):
        self.root = Path(root)
        self.samples = samples
        self.transform = transform
        self.failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        relative, label = self.samples[index]
        try:
            image = load_image(self.root / relative)
        except ImageDecodeError as error:
            if relative not in self.failed:
                self.failed.add(relative)
                logger.warning("训练中跳过无法读取的图像 %s：%s", relative, error)
            return None, relative
        return self.transform(image), label

    def record_failed(self, paths: Sequence[str]) -> None:
        self.failed.update(paths)


@dataclass
class Batch:
    """一个 batch：图像张量、类别张量（全部读取失败时都是 None），以及这个 batch 里读取失败的文件。"""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    failed: list[str]


def collate_skip_bad(items) -> Batch:
    good = [item for item in items if item[0] is not None]
    failed = [item[1] for item in items if item[0] is None]
    if not good:
        return Batch(None, None, failed)
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return Batch(images, labels, failed)


class EpochSampler(Sampler[int]):
    """每个 epoch 用 (seed, epoch) 决定的固定顺序，并能从某一步接着走：中断后恢复时顺序不变。"""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch = epoch
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        return iter(order[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, sampler: Sampler | None = None) -> DataLoader:
    # NOTE: num_workers > 0 时，worker 进程里数据增强的随机数状态不进检查点，恢复训练后的结果会与不中断时略有差别。
    # DataLoader 每次创建迭代器都要抽一个随机种子；给它单独的生成器，就不会动到全局随机数，
    # 从 epoch 中途恢复时，数据增强和 dropout 用到的全局随机数序列与不中断时一致。
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def label_names(classes: list[str]) -> dict:
    """labels.json 的内容：文件夹名、英文名、中文名（没有对照时为 null）。"""
    return {
        "folders": classes,
        "english": [english_name(name) for name in classes],
        "chinese": [chinese_name(name) for name in classes],
    }


def class_display_names(classes: list[str], language: str) -> list[str]:
    return [display_name(name, language) for name in classes]
