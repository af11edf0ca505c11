"""visionft 测试的公共夹具：随机初始化的微型骨干网络、生成的图像文件夹、微型训练配置。

所有模型和图像都由测试在临时文件夹里生成，整套测试在 CPU 上运行，不联网。
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
# 共享数据（离线模型与照片）在仓库旁边的 shared 文件夹里，CI 把仓库克隆到别处时也把它放在旁边
SHARED_DIR = REPO_ROOT.parent / "shared"
CONFIGS_DIR = REPO_ROOT / "code" / "configs"

try:
    import visionft  # noqa: F401
except ImportError:
    # 包还没有安装时，直接从仓库里的 code/ 导入
    sys.path.insert(0, str(REPO_ROOT / "code"))

import torch  # noqa: E402

from visionft.config import load_config  # noqa: E402

# 只用一个 intra-op 线程，因为 CPU 被别的进程占着时，多个 OpenMP 线程互相等待会慢一个数量级。
# 一次测量：2 核机器上另有一个训练进程时，ViT-S/14 的前向传播（batch 8，56×56）用 2 个线程比 1 个线程慢约 24 倍。
torch.set_num_threads(1)

TINY_IMAGE_SIZE = 16
# 每个类别一个主色：微型模型一两个 epoch 就能学会区分
CLASS_COLORS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (170, 60, 200), (40, 200, 210)]
BACKBONE_KINDS = ("dinov2", "vit")


def _tiny_model(kind: str):
    """返回 (随机初始化的微型图像分类模型, 模型类型名)。"""
    import torch
    from transformers import Dinov2Config, Dinov2ForImageClassification, ViTConfig, ViTForImageClassification

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 patch_size=4, image_size=TINY_IMAGE_SIZE, num_labels=2)
    torch.manual_seed(0)
    if kind == "dinov2":
        return Dinov2ForImageClassification(Dinov2Config(**shape))
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(**shape))
    raise ValueError(f"unknown backbone kind: {kind!r}")


def save_tiny_model(kind: str, folder: Path) -> Path:
    """把微型模型和 AutoImageProcessor 能读的 preprocessor_config.json 存进 folder。"""
    from transformers import ViTImageProcessor

    model = _tiny_model(kind)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """返回函数 kind -> 模型文件夹。每种骨干在整个测试会话里只生成一次。"""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = save_tiny_model(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return cache[kind]

    return get


def make_image(color, size=(20, 20), seed: int = 0) -> Image.Image:
    """以 color 为主色、带少量噪声的 RGB 图像。"""
    rng = np.random.default_rng(seed)
    width, height = size
    base = np.array(color, dtype=np.int16).reshape(1, 1, 3)
    noise = rng.integers(-25, 26, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_image_folder(root: Path, classes=("cat_a", "cat_b", "cat_c"), per_class=8, size=(20, 20)) -> Path:
    """生成 ImageFolder：每个类别一个子文件夹，类别之间主色不同，JPEG 与 PNG 交替。

    per_class 可以是整数，也可以是 {类别: 张数}（用来造类别不平衡）。
    """
    root = Path(root)
    for class_index, name in enumerate(classes):
        count = per_class[name] if isinstance(per_class, dict) else per_class
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        color = CLASS_COLORS[class_index % len(CLASS_COLORS)]
        for i in range(count):
            image = make_image(color, size, seed=class_index * 1000 + i)
            suffix = ".jpg" if i % 2 == 0 else ".png"
            image.save(folder / f"{i:03d}{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")


def tiny_config(model_dir: Path, data_dir: Path, output_dir: Path, **overrides):
    """微型训练配置：16×16 输入、batch size 4、1 个 epoch、不用混合精度、不画进度条。"""
    values = {
        "model": str(model_dir),
        "data_dir": str(data_dir),
        "split_dir": None,
        "output_dir": str(output_dir),
        "image_size": TINY_IMAGE_SIZE,
        "batch_size": 4,
        "num_epochs": 1,
        "num_workers": 0,
        "progress": "none",
        "mixed_precision": "no",
        "device": "cpu",
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "run_name": "run",
    }
    values.update(overrides)
    return load_config(None, values)


def run_folders(output_dir: Path) -> list[str]:
    """列出 output_dir 里的运行文件夹名，output_dir 不存在时返回空列表。"""
    if not output_dir.exists():
        return []
    return sorted(path.name for path in output_dir.iterdir())


@pytest.fixture(autouse=True)
def fresh_visionft_logger():
    """每个测试开始时清掉 visionft 日志的 handler。

    setup_logging() 创建的 StreamHandler 绑定创建那一刻的 sys.stdout，而 pytest 每个测试换一个捕获流。
    清掉后由包在本测试里重新创建，日志才进得了本测试的 capsys。
    """
    logger = logging.getLogger("visionft")
    logger.handlers.clear()
    yield
    logger.handlers.clear()


@pytest.fixture
def visionft_log(caplog):
    """捕获 visionft 日志。visionft 的 logger 不向上传播（propagate=False），所以把 caplog 的 handler 直接挂上去。"""
    from visionft.runtime import setup_logging

    setup_logging()
    logger = logging.getLogger("visionft")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="visionft")
    yield caplog
    logger.removeHandler(caplog.handler)
