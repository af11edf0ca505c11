"""真实骨干网络与真实照片上的冒烟测试：一次很小的 LoRA 训练，走完训练、官方划分和测试集评估。

需要仓库旁边 shared 文件夹里的离线 DINOv2 ViT-S/14 和 10 个品种的 Stanford Dogs 照片，没有时跳过。
测试集是官方划分的全部 784 张。一次测量：2 核 CPU、单线程时整个测试约 13 秒。
"""

from __future__ import annotations

import importlib

import pytest
from conftest import SHARED_DIR

from visionft.config import load_config
from visionft.io import read_json

train_module = importlib.import_module("visionft.train")

REAL_MODEL = SHARED_DIR / "models" / "dinov2-vits14-imgfocus"
REAL_DATA = SHARED_DIR / "data" / "stanford-dogs-10"

pytestmark = pytest.mark.skipif(not (REAL_MODEL / "config.json").is_file() or not REAL_DATA.is_dir(),
                                reason="离线骨干网络或 stanford-dogs-10 不在 ../shared 里")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    config = load_config(None, {
        "method": "lora",
        "model": str(REAL_MODEL),
        "data_dir": str(REAL_DATA),
        "split_dir": "auto",
        "output_dir": str(tmp_path_factory.mktemp("real-runs")),
        "max_train_images": 40,
        "num_epochs": 1,
        "image_size": 56,
        "batch_size": 8,
        "mixed_precision": "no",
        "device": "cpu",
        "progress": "none",
        "run_name": "smoke",
    })
    return train_module.train(config)


def test_real_results_written(real_run):
    assert (real_run.run_dir / "results.json").is_file()


def test_real_accuracy_in_range(real_run):
    accuracy = read_json(real_run.run_dir / "results.json")["test_accuracy"]

    assert isinstance(accuracy, float)
    assert 0.0 <= accuracy <= 1.0


def test_real_split_official(real_run):
    results = read_json(real_run.run_dir / "results.json")

    assert results["split"] == "official"
    assert results["num_train_images"] == 40
    assert results["num_test_images"] == 784


def test_real_labels_chinese(real_run):
    labels = read_json(real_run.run_dir / "labels.json")

    assert len(labels["folders"]) == 10
    assert None not in labels["chinese"]
