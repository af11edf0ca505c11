"""推理：对一张图、一个文件夹或一组图像给出 top-k 品种和概率，并画出带预测结果的图片网格。"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .breeds import display_name
from .data import IGNORED_FILE_NAMES, IMAGE_EXTENSIONS, ImageDecodeError, _is_hidden, build_transforms, load_image
from .config import load_config
from .io import display_path
from .model import load_trained_model, logits_for
from .runtime import autocast, resolve_precision, select_device, setup_logging

logger = logging.getLogger("visionft")


@dataclass
class Prediction:
    """一张图像的预测：路径、top-k [(文件夹名, 显示名, 概率)]、按父文件夹推断的真实类别（推断不出时为 None）。"""

    path: Path
    top_k: list[tuple[str, str, float]]
    true_label: str | None = None

    @property
    def label(self) -> str:
        return self.top_k[0][1]

    @property
    def correct(self) -> bool | None:
        return None if self.true_label is None else self.top_k[0][0] == self.true_label


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """把文件和文件夹（递归，跳过隐藏文件夹）展开成图像路径列表；找不到的路径直接报错。"""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                hidden = any(_is_hidden(part) for part in path.relative_to(item).parts)
                if path.is_file() and not hidden and path.suffix.lower() in IMAGE_EXTENSIONS and path.name.lower() not in IGNORED_FILE_NAMES:
                    paths.append(path)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"找不到要预测的图像或文件夹：{display_path(item)}")
    return paths


class Predictor:
    """从运行文件夹加载最佳模型，之后可以反复调用 predict()。"""

    def __init__(self, run_dir: str | Path, model: str | None = None, device: str = "auto", language: str | None = None):
        setup_logging()
        self.run_dir = Path(run_dir)
        self.model, meta = load_trained_model(self.run_dir / "best", base_model=model)
        self.device = select_device(device)
        self.model.to(self.device)
        config = load_config(self.run_dir / "config.yaml")
        self.dtype = resolve_precision(config.mixed_precision, self.device)
        self.classes = [meta["id2label"][str(i)] for i in range(meta["num_labels"])]
        self.language = language or config.label_language
        self.names = [display_name(name, self.language) for name in self.classes]
        self.transform = build_transforms(meta["image_size"], meta["image_mean"], meta["image_std"], train=False)

    @torch.no_grad()
    def predict(self, inputs: Iterable[str | Path] | str | Path, top_k: int = 3, batch_size: int = 16) -> list[Prediction]:
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        paths = collect_images(inputs)
        if top_k < 1:
            raise ValueError(f"top_k 应当是正整数，收到 {top_k}。")
        top_k = min(top_k, len(self.classes))
        results: list[Prediction] = []
        skipped = 0
        for start in range(0, len(paths), batch_size):
            images, loaded_paths = [], []
            for path in paths[start:start + batch_size]:
                try:
                    images.append(self.transform(load_image(path)))
                    loaded_paths.append(path)
                except ImageDecodeError as error:
                    skipped += 1
                    logger.warning("跳过无法读取的图像 %s：%s", display_path(path), error)
            if not images:
                continue
            with autocast(self.device, self.dtype):
                logits = logits_for(self.model, torch.stack(images).to(self.device))
            probabilities = logits.float().softmax(dim=-1).cpu()
            values, indices = probabilities.topk(top_k, dim=-1)
            for path, row_values, row_indices in zip(loaded_paths, values.tolist(), indices.tolist()):
                top = [(self.classes[i], self.names[i], p) for p, i in zip(row_values, row_indices)]
                parent = path.parent.name
                results.append(Prediction(path, top, parent if parent in self.classes else None))
        if skipped:
            logger.warning("共跳过 %d 个无法读取的文件。", skipped)
        return results


def predict(run_dir: str | Path, inputs, top_k: int = 3, model: str | None = None, device: str = "auto") -> list[Prediction]:
    """便捷函数：加载运行文件夹里的模型并预测 inputs（图像、文件夹或它们的列表）。"""
    return Predictor(run_dir, model=model, device=device).predict(inputs, top_k=top_k)


def format_predictions(predictions: list[Prediction]) -> str:
    """把预测结果排成适合打印的文本表。"""
    lines = []
    for item in predictions:
        guesses = "，".join(f"{name} {probability:.1%}" for _, name, probability in item.top_k)
        truth = ""
        if item.true_label is not None:
            truth = f"（真实：{display_name(item.true_label)}，{'✓' if item.correct else '✗'}）"
        lines.append(f"{item.path.name}: {guesses}{truth}")
    return "\n".join(lines)


def plot_predictions(predictions: list[Prediction], path: str | Path | None = None, columns: int = 4, language: str = "zh"):
    """画图片网格：每张图下写预测品种与概率；能推断真实类别时写出来，对的标绿、错的标红。返回 matplotlib Figure。"""
    import matplotlib.pyplot as plt

    from .plotting import save_figure, setup_chinese_font

    setup_chinese_font()
    if not predictions:
        raise ValueError("没有可画的预测结果。")
    columns = min(columns, len(predictions))
    rows = (len(predictions) + columns - 1) // columns
    figure, axes_grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, item in zip(axes_grid.flat, predictions):
        axes.imshow(load_image(item.path))
        _, name, probability = item.top_k[0]
        title = f"预测：{name} {probability:.0%}"
        color = "black"
        if item.true_label is not None:
            title += f"\n真实：{display_name(item.true_label, language)}"
            color = "green" if item.correct else "red"
        axes.set_title(title, color=color, fontsize=10)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, Path(path))
    return figure
