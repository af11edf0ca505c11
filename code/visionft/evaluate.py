"""评估：在一个数据集上推理，计算准确率、macro-F1、逐品种报告和混淆矩阵，并写进运行文件夹。"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from torch import nn

from .model import logits_for
from .io import atomic_write_json, atomic_write_text, display_path, read_json
from .runtime import Progress, autocast

logger = logging.getLogger("visionft")


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: torch.device, dtype=None, description: str = "评估", progress: str = "auto") -> dict:
    """对 loader 里的全部图像推理，返回 labels、predictions（numpy 数组）、probabilities 和平均 loss。"""
    model.eval()
    labels, probabilities = [], []
    total_loss, count = 0.0, 0
    bar = Progress(len(loader), description, mode=progress)
    for batch in loader:
        bar.update()
        loader.dataset.record_failed(batch.failed)
        if batch.images is None:  # 整个 batch 的图像都读取失败
            continue
        images, targets = batch.images.to(device), batch.labels.to(device)
        with autocast(device, dtype):
            logits = logits_for(model, images)
        logits = logits.float()
        total_loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
        labels.append(targets.cpu())
        probabilities.append(logits.softmax(dim=-1).cpu())
    bar.close()
    if count == 0:
        raise RuntimeError("评估集里没有一张能读取的图像。")
    probs = torch.cat(probabilities).numpy()
    return {
        "labels": torch.cat(labels).numpy(),
        "predictions": probs.argmax(axis=1),
        "probabilities": probs,
        "loss": total_loss / count,
    }


def compute_metrics(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> dict:
    """准确率、macro-F1、逐类报告（每个类别都列出，即使它在这个集合里没有样本）和混淆矩阵。"""
    all_labels = list(range(len(class_names)))
    report = classification_report(
        labels, predictions, labels=all_labels, target_names=class_names, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=all_labels, average="macro", zero_division=0)),
        "num_images": int(len(labels)),
        "report": report,
        "report_text": classification_report(
            labels, predictions, labels=all_labels, target_names=class_names, digits=3, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=all_labels).tolist(),
        "class_names": class_names,
    }


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str = "混淆矩阵") -> None:
    """画混淆矩阵（行是真实品种，列是预测品种），格子里写数量，保存为 PNG。"""
    # 用 Figure 对象而不是 pyplot：不切换 matplotlib 后端，也不会在 notebook 里多显示一张图
    from matplotlib.figure import Figure

    from .plotting import save_figure, setup_chinese_font

    setup_chinese_font()
    matrix_array = np.asarray(matrix)
    size = max(5.0, 0.55 * len(class_names) + 2.5)
    figure = Figure(figsize=(size, size * 0.9))
    axes = figure.subplots()
    image = axes.imshow(matrix_array, cmap="Blues")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("预测品种")
    axes.set_ylabel("真实品种")
    axes.set_title(title)
    if len(class_names) <= 30:
        threshold = matrix_array.max() / 2 if matrix_array.size else 0
        for row in range(matrix_array.shape[0]):
            for column in range(matrix_array.shape[1]):
                value = matrix_array[row, column]
                if value:
                    axes.text(column, row, str(value), ha="center", va="center",
                              color="white" if value > threshold else "black", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    save_figure(figure, path)


def write_evaluation(metrics: dict, folder: Path, title: str) -> None:
    """把评估结果写进 folder：metrics.json、classification_report.txt、confusion_matrix.png。"""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {key: metrics[key] for key in ("accuracy", "macro_f1", "num_images", "class_names", "report", "confusion_matrix")}
    for key in ("split", "data_dir", "skipped_images"):
        if key in metrics:
            summary[key] = metrics[key]
    atomic_write_json(folder / "metrics.json", summary)
    atomic_write_text(folder / "classification_report.txt", metrics["report_text"])
    plot_confusion_matrix(metrics["confusion_matrix"], metrics["class_names"], folder / "confusion_matrix.png", title)


def evaluate(run_dir: str | Path, data_dir: str | None = None, split: str = "test", model: str | None = None,
             batch_size: int | None = None, device: str = "auto", progress: str = "auto") -> dict:
    """用运行文件夹里的最佳检查点评估。

    不给 data_dir 时用训练时保存的划分（split.json）里的 `split` 子集；给了 data_dir 时评估该文件夹里的全部图像，
    其中的类别必须是模型认识的类别。结果写进 <run_dir>/evaluation/<名字>/。
    """
    from .data import DataError, ImageListDataset, Split, build_transforms, class_display_names, make_loader, scan_image_folder
    from .model import load_trained_model
    from .runtime import resolve_precision, select_device, setup_logging
    from .config import load_config

    setup_logging()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{display_path(run_dir)} 不是 visionft 的运行文件夹（缺少 config.yaml）。请传 runs/ 下的某个运行文件夹。")
    config = load_config(run_dir / "config.yaml")
    labels = read_json(run_dir / "labels.json")
    classes = labels["folders"]
    model_obj, meta = load_trained_model(run_dir / "best", base_model=model)
    target_device = select_device(device)
    dtype = resolve_precision(config.mixed_precision, target_device)
    model_obj.to(target_device)

    if data_dir is None:
        saved = read_json(run_dir / "split.json")
        root = Path(config.data_dir)
        if not root.is_dir():
            raise DataError(
                f"找不到训练时的数据文件夹 {config.data_dir}（相对当前目录）。"
                "请在训练时的目录下运行，或用 --data_dir 指定要评估的数据文件夹。"
            )
        samples = getattr(Split.from_json(saved), split)
        skipped = len(saved.get("skipped", []))
        name = split
    else:
        scan = scan_image_folder(data_dir, classes=classes)
        root, samples, skipped = scan.root, scan.samples, len(scan.skipped)
        name = Path(data_dir).name or "data"
    transform = build_transforms(meta["image_size"], meta["image_mean"], meta["image_std"], train=False)
    dataset = ImageListDataset(root, samples, transform)
    loader = make_loader(dataset, batch_size or config.batch_size, num_workers=0)
    logger.info("评估 %s：%d 张图像，%d 个类别。", display_path(root), len(samples), len(classes))
    outputs = predict_loader(model_obj, loader, target_device, dtype, description=f"评估 {name}", progress=progress)
    names = class_display_names(classes, config.label_language)
    metrics = compute_metrics(outputs["labels"], outputs["predictions"], names)
    metrics.update(split=name, data_dir=display_path(root), skipped_images=skipped + len(dataset.failed))
    folder = run_dir / "evaluation" / name
    write_evaluation(metrics, folder, title=f"混淆矩阵（{name}，准确率 {metrics['accuracy']:.3f}）")
    logger.info("准确率 %.4f，macro-F1 %.4f；结果写入 %s。", metrics["accuracy"], metrics["macro_f1"], display_path(folder))
    if metrics["skipped_images"]:
        logger.warning("共跳过 %d 个无法读取的文件。", metrics["skipped_images"])
    return metrics
