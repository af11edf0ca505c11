"""模型：加载骨干网络，为 LoRA 或全量微调做准备，保存与读回最佳检查点。

LoRA 和全量微调共用同一条训练流程，只有"准备模型"这一步不同：
- lora：冻结骨干，在注意力的线性层旁加低秩适配器（peft），分类头整体训练；
- full：训练全部权重，按层设置学习率（逐层衰减），可以按 epoch 渐进解冻顶部的 block。
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, TrainConfig
from .io import atomic_write_json, display_path, read_json

logger = logging.getLogger("visionft")

META_FILE = "visionft.json"

# LoRA 默认注入注意力的 query 与 value 投影（LoRA 论文的做法）。不同版本的 transformers
# 给它们起的名字不同：transformers 4.x 的 ViT 与 DINOv2 叫 query/value，5.x 叫 q_proj/v_proj，
# 有的模型把三者合成一个 qkv。按骨干里真实存在的名字选。
QUERY_VALUE_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("qkv",))


class ModelLoadError(RuntimeError):
    """骨干网络或检查点无法加载，或与运行记录不匹配。"""


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    # transformers 5 对 peft 调用的旧接口发出的弃用提示，与学习者无关
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def load_backbone(model_name: str, id2label: dict[int, str], new_head: bool = True) -> nn.Module:
    """加载 Hub 上的图像分类模型或本地文件夹，换上 num_labels 个输出的新分类头。"""
    from transformers import AutoModelForImageClassification

    _quiet_transformers()
    looks_local = model_name.startswith((".", "/", "~")) or os.sep in model_name and Path(model_name).exists()
    if looks_local and not Path(model_name).expanduser().exists():
        raise ModelLoadError(f"找不到本地模型文件夹：{model_name}。请检查 --model 的路径。")
    label2id = {name: index for index, name in id2label.items()}
    try:
        model = AutoModelForImageClassification.from_pretrained(
            str(Path(model_name).expanduser()) if looks_local else model_name,
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"无法加载模型 {model_name}：{error}\n"
            "如果你在线：检查模型 id 的拼写。如果连不上 Hugging Face Hub（例如在中国大陆）："
            "设置 HF_ENDPOINT 使用镜像，或从 ModelScope 下载后用 --model 传本地文件夹，见 FAQ。"
        ) from error
    if new_head:
        logger.info("已加载骨干网络 %s（%s），分类头是新初始化的 %d 类输出层。", model_name, type(model).__name__, len(id2label))
    else:
        logger.info("已加载骨干网络 %s（%s），接着装入训练好的权重。", model_name, type(model).__name__)
    return model


# ---------------------------------------------------------------------------
# 结构：找出 Transformer block、嵌入层和分类头


@dataclass
class Anatomy:
    """骨干网络的结构：block 列表的模块名、block 数、嵌入层前缀、分类头模块名。"""

    blocks_name: str
    num_blocks: int
    embeddings_prefix: str | None
    head_names: list[str]

    def block_index(self, parameter_name: str) -> int | None:
        prefix = self.blocks_name + "."
        if parameter_name.startswith(prefix):
            return int(parameter_name[len(prefix):].split(".")[0])
        return None


def describe_model(model: nn.Module) -> Anatomy:
    """在 Hugging Face 图像分类模型里找 block 列表（最长的 ModuleList）、嵌入层和分类头。"""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and len(module) > 0]
    if not lists:
        raise ModelLoadError(f"{type(model).__name__} 里找不到 Transformer block 列表，visionft 目前只支持 ViT 类骨干。")
    blocks_name, blocks = max(lists, key=lambda item: len(item[1]))
    base_prefix = getattr(model, "base_model_prefix", "")
    head_names = [name for name, _ in model.named_children() if name != base_prefix]
    if not head_names:
        raise ModelLoadError(f"{type(model).__name__} 里找不到分类头（base_model_prefix={base_prefix!r}）。")
    embeddings = [name for name, _ in model.named_modules() if name.endswith("embeddings") and name.count(".") <= 1]
    return Anatomy(blocks_name, len(blocks), embeddings[0] if embeddings else None, head_names)


def linear_module_names(model: nn.Module, anatomy: Anatomy) -> list[str]:
    """block 里所有线性层的短名字（如 query、value、fc1），LoRA 可以注入这些模块。"""
    names = set()
    for name, module in model.named_modules():
        if name.startswith(anatomy.blocks_name + ".") and isinstance(module, nn.Linear):
            names.add(name.split(".")[-1])
    return sorted(names)


def resolve_lora_targets(model: nn.Module, anatomy: Anatomy, requested: list[str] | str) -> list[str]:
    available = linear_module_names(model, anatomy)
    if requested == "auto":
        for candidates in QUERY_VALUE_NAMES:
            if all(name in available for name in candidates):
                return list(candidates)
        raise ConfigError(
            f"无法为 {type(model).__name__} 自动选择 LoRA 模块：没有找到 query/value 投影。"
            f"请用 lora_target_modules 指定，可选：{', '.join(available)}。"
        )
    missing = [name for name in requested if name not in available]
    if missing:
        raise ConfigError(
            f"配置项 lora_target_modules 里的模块在 {type(model).__name__} 中不存在：{', '.join(missing)}。"
            f"可用的线性层名字：{', '.join(available)}。"
        )
    return list(requested)


# ---------------------------------------------------------------------------
# 两种方法各自的准备步骤


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def prepare_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """冻结骨干，注入 LoRA 适配器；分类头通过 modules_to_save 整体训练并随适配器保存。"""
    from peft import LoraConfig, get_peft_model

    anatomy = describe_model(model)
    targets = resolve_lora_targets(model, anatomy, config.lora_target_modules)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=anatomy.head_names,
        bias="none",
    )
    peft_model = get_peft_model(model, lora_config)
    lora_parameters = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad)
    if lora_parameters == 0:
        # 只训练分类头就是线性探测，不是 LoRA：不能悄悄这样跑
        raise ConfigError(f"LoRA 没有注入任何可训练参数（目标模块：{targets}）。请检查 lora_target_modules。")
    logger.info("LoRA：r=%d，alpha=%d，dropout=%.2f，注入模块 %s，分类头 %s 整体训练。",
                config.lora_r, config.lora_alpha, config.lora_dropout, targets, anatomy.head_names)
    return peft_model


def layer_id(name: str, anatomy: Anatomy) -> int:
    """参数所在的层号：嵌入层为 0，第 i 个 block 为 i+1，顶部（最后的 norm 和分类头）为 num_blocks+1。"""
    block = anatomy.block_index(name)
    if block is not None:
        return block + 1
    if anatomy.embeddings_prefix and name.startswith(anatomy.embeddings_prefix + "."):
        return 0
    return anatomy.num_blocks + 1


def layer_name(layer: int, num_blocks: int) -> str:
    """层号（见 layer_id）的中文名字，用于日志和表格。"""
    if layer == 0:
        return "嵌入层"
    if layer == num_blocks + 1:
        return "最后的 LayerNorm + 分类头"
    return f"block {layer}"


def full_parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """逐层学习率衰减的参数组：层号 i 的学习率 = lr × layer_decay^(num_blocks + 1 − i)。

    偏置、LayerNorm 和 1 维的 token（cls、mask、layer scale）不做 weight decay。
    """
    anatomy = describe_model(model)
    top = anatomy.num_blocks + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        layer = layer_id(name, anatomy)
        no_decay = parameter.ndim <= 1 or name.endswith(".bias") or "token" in name
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "layer": layer,
                "lr": config.lr * config.layer_decay ** (top - layer),
                "weight_decay": 0.0 if no_decay else config.weight_decay,
            }
        groups[key]["params"].append(parameter)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def apply_unfreeze(model: nn.Module, schedule: list[int] | None, epoch: int) -> int:
    """按渐进解冻计划设置 requires_grad，返回本 epoch 可训练的顶部 block 数。

    第 epoch 个（从 0 数）epoch 解冻顶部 schedule[epoch] 个 block（超出列表长度时用最后一个值）；
    解冻数不小于 block 数时，嵌入层也一起解冻。最后的 norm 和分类头总是可训练。
    """
    anatomy = describe_model(model)
    if schedule is None:
        top_blocks = anatomy.num_blocks
        include_embeddings = True
    else:
        top_blocks = min(schedule[min(epoch, len(schedule) - 1)], anatomy.num_blocks)
        include_embeddings = schedule[min(epoch, len(schedule) - 1)] >= anatomy.num_blocks
    first_trainable = anatomy.num_blocks - top_blocks
    for name, parameter in model.named_parameters():
        layer = layer_id(name, anatomy)
        if layer == 0:
            parameter.requires_grad = include_embeddings
        elif layer <= anatomy.num_blocks:
            parameter.requires_grad = layer - 1 >= first_trainable
        else:
            parameter.requires_grad = True
    return top_blocks


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    if config.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(model).__name__} 不支持 gradient_checkpointing，请把它设为 false。")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.method == "lora":
            # 输入不需要梯度时，检查点重算的段里 LoRA 权重也拿不到梯度；让嵌入输出带上梯度
            model.enable_input_require_grads()
    if config.method == "lora":
        return prepare_lora(model, config)
    return model


# ---------------------------------------------------------------------------
# 最佳检查点：LoRA 存适配器 + 分类头，full 存整个模型；都用 safetensors


def backbone_signature(model: nn.Module) -> dict:
    """记录骨干网络的结构指纹，读回检查点时用来发现"换了骨干"的错误。"""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "patch_size": getattr(cfg, "patch_size", None),
    }


def save_best(model: nn.Module, folder: Path, config: TrainConfig, id2label: dict[int, str], mean, std,
              extra: dict | None = None) -> None:
    """把最佳模型写进 folder（调用方负责先写临时文件夹再整体替换）。"""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    meta = {
        "method": config.method,
        "base_model": config.model,
        "backbone": backbone_signature(model),
        "num_labels": len(id2label),
        "id2label": {str(k): v for k, v in id2label.items()},
        "image_size": config.image_size,
        "image_mean": list(mean),
        "image_std": list(std),
        **(extra or {}),
    }
    atomic_write_json(folder / META_FILE, meta)


def _check_signature(expected: dict, actual: dict, base_model: str, checkpoint: Path) -> None:
    if expected != actual:
        raise ModelLoadError(
            f"检查点 {display_path(checkpoint)} 是在骨干 {expected} 上训练的，"
            f"但现在加载的骨干 {base_model} 是 {actual}。请用 --model 指向训练时用的骨干网络。"
        )


def load_trained_model(checkpoint: Path, base_model: str | None = None) -> tuple[nn.Module, dict]:
    """读回 save_best 写出的检查点，返回 (eval 模式的模型, 元信息)。

    LoRA 检查点需要训练时的骨干网络：默认用元信息里记录的 base_model，可以用 base_model 覆盖。
    """
    checkpoint = Path(checkpoint)
    meta_path = checkpoint / META_FILE
    if not checkpoint.is_dir():
        run_dir = checkpoint.parent
        if (run_dir / "results.json").is_file():
            raise ModelLoadError(
                f"{display_path(run_dir)} 训练完成了，但权重文件夹 {checkpoint.name}/ 不在这里"
                "（课程仓库只提交指标和图，不提交权重）。请重新训练一次：python -m visionft train --config <配置文件> ..."
            )
        raise ModelLoadError(
            f"{display_path(run_dir)} 里没有 {checkpoint.name}/ 检查点：这次训练还没有完成任何一个 epoch。"
            f"可以用 python -m visionft train --resume {display_path(run_dir)} 继续训练。"
        )
    if not meta_path.is_file():
        raise ModelLoadError(f"{display_path(checkpoint)} 不是 visionft 保存的检查点（缺少 {META_FILE}）。")
    meta = read_json(meta_path)
    id2label = {int(k): v for k, v in meta["id2label"].items()}
    _quiet_transformers()
    if meta["method"] == "lora":
        from peft import PeftModel

        if not (checkpoint / "adapter_model.safetensors").is_file():
            raise ModelLoadError(f"{display_path(checkpoint)} 里没有 adapter_model.safetensors：visionft 只读取 safetensors 格式的权重。")
        base_name = base_model or meta["base_model"]
        base = load_backbone(base_name, id2label, new_head=False)
        _check_signature(meta["backbone"], backbone_signature(base), base_name, checkpoint)
        try:
            model = PeftModel.from_pretrained(base, checkpoint)
        except RuntimeError as error:  # 形状不匹配：类别数或骨干尺寸不同
            raise ModelLoadError(
                f"无法把适配器 {display_path(checkpoint)}（{meta['num_labels']} 个类别，骨干 {meta['base_model']}）"
                f"装到骨干 {base_name}（{len(id2label)} 个类别）上：{error}"
            ) from error
    else:
        from transformers import AutoModelForImageClassification

        if not (checkpoint / "model.safetensors").is_file():
            raise ModelLoadError(f"{display_path(checkpoint)} 里没有 model.safetensors：visionft 只读取 safetensors 格式的权重。")
        model = AutoModelForImageClassification.from_pretrained(checkpoint, use_safetensors=True)
        if model.config.num_labels != meta["num_labels"]:
            raise ModelLoadError(
                f"检查点 {display_path(checkpoint)} 的分类头有 {model.config.num_labels} 个类别，"
                f"但 {META_FILE} 记录的是 {meta['num_labels']} 个类别。"
            )
    model.eval()
    return model, meta


def logits_for(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """前向计算得到 logits。

    ViT 默认只接受预训练时的输入尺寸（例如 224），尺寸不同时要显式打开位置编码插值；
    DINOv2 总是插值，它的 forward 没有这个参数。
    """
    kwargs = {}
    if _accepts_interpolation(model):
        kwargs["interpolate_pos_encoding"] = True
    return model(pixel_values=images, **kwargs).logits


def _accepts_interpolation(model: nn.Module) -> bool:
    cached = getattr(model, "_visionft_interpolates", None)
    if cached is None:
        import inspect

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cached = "interpolate_pos_encoding" in inspect.signature(base.forward).parameters
        model._visionft_interpolates = cached
    return cached


def merge_lora(model: nn.Module) -> nn.Module:
    """把 LoRA 权重合并进骨干，返回普通的 transformers 模型（推理更快，也便于导出）。"""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
