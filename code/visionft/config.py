"""训练配置：带类型的 dataclass，从 YAML 读取，再用命令行参数覆盖。

读取顺序与 nanoGPT、timm 相同：代码里的默认值 → YAML 文件 → 命令行 `--key value`。
未知的键、类型不对的值、超出范围的值都会在训练开始前报错，并指出是哪个键。
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """配置无效：消息里写明出错的键、收到的值和允许的取值。"""


@dataclass
class TrainConfig:
    """一次训练的全部设置。每个字段都可以写进 YAML，也可以用 `--字段名 值` 覆盖。"""

    # 方法与模型
    method: str = "lora"
    """微调方法：`lora`（只训练低秩适配器和分类头）或 `full`（训练全部权重）。"""
    model: str = "facebook/dinov2-small"
    """Hugging Face Hub 上的图像分类模型 id，或本地模型文件夹的路径。"""
    profile: str = "quick"
    """配置档位的名字（`quick`、`full` 等），只用于给运行文件夹命名。"""

    # 数据
    data_dir: str = "data/stanford-dogs-10"
    """ImageFolder 格式的数据文件夹：每个品种一个子文件夹。"""
    split_dir: str | None = "auto"
    """官方 train.txt/test.txt 所在文件夹；`auto` 表示在数据文件夹旁边查找，`null` 表示不用官方划分。"""
    val_fraction: float = 0.1
    """从训练集里分层抽出作验证集的比例。"""
    test_fraction: float = 0.2
    """没有官方划分时，分层抽出作测试集的比例。"""
    image_size: int = 112
    """输入图像边长（像素）。DINOv2 的 patch 是 14，取 14 的倍数最省事。"""
    max_train_images: int | None = None
    """只用 N 张训练图像（按类别轮流抽取，调试用）；`null` 表示全部使用。"""
    label_language: str = "zh"
    """图表和预测结果里品种名的语言：`zh` 或 `en`。"""

    # 优化
    num_epochs: int = 3
    """训练多少个 epoch（完整遍历训练集的次数）。"""
    batch_size: int = 32
    """每一步送进模型的图像数。显存或内存不够时调小，再用 grad_accum_steps 保持有效 batch size。"""
    grad_accum_steps: int = 1
    """梯度累积步数：有效 batch size = batch_size × grad_accum_steps。"""
    lr: float = 1e-3
    """学习率。full 方法里这是分类头的学习率，往下每一层再乘一次 layer_decay。"""
    weight_decay: float = 0.01
    """AdamW 的权重衰减系数（偏置和 LayerNorm 不衰减）。"""
    warmup_ratio: float = 0.1
    """学习率线性预热占总步数的比例，之后余弦衰减到 0。"""
    label_smoothing: float = 0.0
    """交叉熵的标签平滑系数，0 表示不平滑。"""
    max_grad_norm: float = 1.0
    """梯度裁剪的最大范数；0 表示不裁剪。"""

    # LoRA
    lora_r: int = 8
    """LoRA 低秩矩阵的秩 r：越大可训练参数越多。"""
    lora_alpha: int = 16
    """LoRA 的缩放系数 alpha：更新量按 alpha / r 缩放。"""
    lora_dropout: float = 0.1
    """LoRA 分支输入上的 dropout 比例。"""
    lora_target_modules: list[str] | str = "auto"
    """LoRA 注入的模块名；`auto` 按骨干网络的结构选注意力的 query 与 value。"""

    # 全量微调
    layer_decay: float = 0.75
    """逐层学习率衰减：第 i 个 block 的学习率 = lr × layer_decay^(层数 − i)；1 表示不衰减。"""
    unfreeze_schedule: list[int] | None = None
    """渐进解冻：第 k 个 epoch 可训练的顶部 block 数，例如 [4, 8, 12]；不小于层数表示连同嵌入层全部解冻；`null` 表示从一开始就训练全部权重。"""

    # 运行环境
    device: str = "auto"
    """`auto`（依次尝试 CUDA、MPS、CPU）、`cuda`、`mps` 或 `cpu`。"""
    mixed_precision: str = "auto"
    """`auto`、`bf16`、`fp16` 或 `no`。设备不支持时回退到 FP32 并说明。"""
    gradient_checkpointing: bool = False
    """梯度检查点：反向传播时重算前向，激活值占的内存大幅减少，每步约慢三分之一。"""
    num_workers: int = 0
    """DataLoader 读图的子进程数；0 表示在主进程里读（CPU 上训练时通常最快，恢复训练也完全可复现）。"""
    seed: int = 42
    """随机种子：决定数据划分、数据增强、dropout 和分类头初始化，同样的种子得到同样的结果。"""
    output_dir: str = "runs"
    """运行文件夹放在哪个文件夹下。"""
    run_name: str | None = None
    """运行文件夹的名字；`null` 表示用 方法-档位-时间 自动命名。已存在的文件夹不会被覆盖。"""
    progress: str = "auto"
    """进度条：`auto`、`bar`（终端进度条）、`notebook`（notebook 内刷新的文本条）或 `none`。"""


CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("lora", "full"),
    "label_language": ("zh", "en"),
    "device": ("auto", "cuda", "mps", "cpu"),
    "mixed_precision": ("auto", "bf16", "fp16", "no"),
    "progress": ("auto", "bar", "notebook", "none"),
}

# 数值的允许范围：(下界, 上界, 下界是否可以取到)
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "val_fraction": (0.0, 0.5, False),
    "test_fraction": (0.0, 0.5, False),
    "image_size": (14, 1024, True),
    "max_train_images": (1, None, True),
    "num_epochs": (1, 1000, True),
    "batch_size": (1, 4096, True),
    "grad_accum_steps": (1, 1024, True),
    "lr": (0.0, 1.0, False),
    "weight_decay": (0.0, 1.0, True),
    "warmup_ratio": (0.0, 0.5, True),
    "label_smoothing": (0.0, 0.5, True),
    "max_grad_norm": (0.0, None, True),
    "lora_r": (1, 1024, True),
    "lora_alpha": (1, 4096, True),
    "lora_dropout": (0.0, 0.9, True),
    "layer_decay": (0.0, 1.0, False),
    "num_workers": (0, 64, True),
}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _allowed_types(hint: Any) -> tuple[Any, ...]:
    """把 `int | None`、`list[int] | str` 这样的注解拆成各个成员类型。"""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _type_label(hint: Any) -> str:
    names = {int: "整数", float: "数字", str: "字符串", bool: "true/false", type(None): "null"}
    parts = []
    for member in _allowed_types(hint):
        if typing.get_origin(member) is list:
            (item,) = typing.get_args(member)
            parts.append(f"{names[item]}列表")
        else:
            parts.append(names[member])
    return " 或 ".join(parts)


def _coerce_to(member: Any, value: Any) -> tuple[bool, Any]:
    """尝试把 value 当作 member 类型；返回 (是否匹配, 转换后的值)。"""
    if member is type(None):
        return value is None, None
    if member is bool:
        return isinstance(value, bool), value
    if member is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if member is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if member is str:
        return isinstance(value, str), value
    if typing.get_origin(member) is list:
        (item,) = typing.get_args(member)
        if not isinstance(value, list):
            return False, value
        converted = []
        for element in value:
            ok, element = _coerce_to(item, element)
            if not ok:
                return False, value
            converted.append(element)
        return True, converted
    raise TypeError(f"不支持的配置类型：{member}")


def _check_type(key: str, value: Any) -> Any:
    hint = _type_hints()[key]
    # PyYAML 按 YAML 1.1 把 1e-4（没有小数点）读成字符串；数字类型的键按数字再试一次
    if float in _allowed_types(hint) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    for member in _allowed_types(hint):
        ok, converted = _coerce_to(member, value)
        if ok:
            return converted
    raise ConfigError(
        f"配置项 {key} 的类型不对：收到 {value!r}（{type(value).__name__}），应为{_type_label(hint)}。"
    )


def parse_cli_value(key: str, text: str) -> Any:
    """把命令行上的字符串按 YAML 语法解析（`1e-4`、`true`、`[4, 8]`、`null`），再检查类型。"""
    if key not in field_names():
        raise ConfigError(_unknown_key_message(key))
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    hint = _type_hints()[key]
    # YAML 把 1e-4 读成字符串（它要求写成 1.0e-4），这里按数字再试一次。
    if float in _allowed_types(hint) and isinstance(value, str):
        try:
            value = float(text)
        except ValueError:
            pass
    if str in _allowed_types(hint) and not isinstance(value, str) and value is not None:
        if not any(_coerce_to(m, value)[0] for m in _allowed_types(hint) if m is not str):
            value = text
    return _check_type(key, value)


def _unknown_key_message(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, field_names(), n=3)
    hint = f"你是不是想写：{'、'.join(close)}？" if close else "可用的配置项见 code/configs/ 里的 YAML 文件。"
    return f"未知的配置项：{key}。{hint}"


def validate(config: TrainConfig) -> TrainConfig:
    """检查取值范围与选项，返回同一个对象；不合法时抛出 ConfigError。"""
    for key, choices in CHOICES.items():
        value = getattr(config, key)
        if value not in choices:
            raise ConfigError(f"配置项 {key} 的取值无效：{value!r}。允许的取值：{', '.join(choices)}。")
    for key, (low, high, low_inclusive) in RANGES.items():
        value = getattr(config, key)
        if value is None:
            continue
        too_low = value < low if low_inclusive else value <= low
        too_high = high is not None and value > high
        if too_low or too_high:
            left = "[" if low_inclusive else "("
            right = f"{high}]" if high is not None else "∞)"
            raise ConfigError(f"配置项 {key} 的取值超出范围：{value!r}。允许范围：{left}{low}, {right}。")
    if isinstance(config.lora_target_modules, list) and not config.lora_target_modules:
        raise ConfigError("配置项 lora_target_modules 不能是空列表：写 auto，或列出要注入 LoRA 的模块名。")
    if isinstance(config.lora_target_modules, str) and config.lora_target_modules != "auto":
        raise ConfigError(
            f"配置项 lora_target_modules 的取值无效：{config.lora_target_modules!r}。写 auto，或写成列表，例如 [query, value]。"
        )
    if config.unfreeze_schedule is not None:
        if not config.unfreeze_schedule or any(n < 1 for n in config.unfreeze_schedule):
            raise ConfigError(
                f"配置项 unfreeze_schedule 的取值无效：{config.unfreeze_schedule!r}。应为正整数列表，例如 [4, 8, 12]，或 null。"
            )
        if config.unfreeze_schedule != sorted(config.unfreeze_schedule):
            raise ConfigError(
                f"配置项 unfreeze_schedule 应当逐个 epoch 不减：{config.unfreeze_schedule!r}。渐进解冻只会解冻更多层。"
            )
    if not config.model:
        raise ConfigError("配置项 model 为空：请给出 Hub 上的模型 id 或本地模型文件夹。")
    return config


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """用字典里的值覆盖 base（默认是代码里的默认值），逐项检查键名和类型。"""
    config = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        if key not in field_names():
            raise ConfigError(_unknown_key_message(key))
        setattr(config, key, _check_type(key, value))
    return validate(config)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """读取 YAML 配置并应用覆盖项，返回检查过的 TrainConfig。"""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"找不到配置文件：{path}。可用的配置在 code/configs/ 里，例如 code/configs/lora_quick.yaml。")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"配置文件 {path} 不是合法的 YAML：{error}") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"配置文件 {path} 的顶层应当是 键: 值 的映射，实际是 {type(loaded).__name__}。")
        values.update(loaded)
    values.update(overrides or {})
    try:
        return from_dict(values)
    except ConfigError as error:
        # 指出出错的值来自哪里：命令行（或 notebook 里的覆盖字典）还是配置文件
        match = re.search(r"配置项[：\s]*([A-Za-z_]+)", str(error))
        key = match.group(1) if match else None
        if key is not None and key in (overrides or {}):
            where = f"（来自覆盖项 {key}，例如命令行上的 --{key}）"
        elif path is not None:
            where = f"（来自 {path}）"
        else:
            where = ""
        raise ConfigError(f"{error}{where}") from None


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    from .io import atomic_write_text

    text = yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False)
    atomic_write_text(Path(path), text)


def field_help(name: str) -> str:
    """返回字段的说明文字（取自上面各字段后的字符串），用于命令行帮助。"""
    return _FIELD_DOCS.get(name, "")


def _collect_field_docs() -> dict[str, str]:
    import ast
    import inspect

    source = inspect.getsource(TrainConfig)
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value
    return docs


try:
    _FIELD_DOCS = _collect_field_docs()
except (OSError, TypeError):  # 没有源码（例如打包成 zip）时，帮助里只是少了说明
    _FIELD_DOCS = {}

