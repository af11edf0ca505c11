"""训练：LoRA 与全量微调共用的一条流程。

train() 从上往下读：准备运行文件夹 → 随机种子与设备 → 数据 → 模型 → 优化器 →
逐 epoch 训练与验证（保存最佳检查点和可恢复状态）→ 用最佳检查点在测试集上评估 → 写 results.json。
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from . import data as data_lib
from .config import ConfigError, TrainConfig, load_config, save_config, validate
from .evaluate import compute_metrics, predict_loader, write_evaluation
from .io import (append_jsonl, atomic_write_json, create_run_dir, display_path, find_checkpoint_dir, mark_complete,
                 read_json, read_jsonl, replace_dir)
from .model import (ModelLoadError, apply_unfreeze, layer_name, count_parameters, describe_model, full_parameter_groups, load_backbone,
                    load_trained_model, logits_for, prepare_model, save_best)
from .runtime import (PeakMemory, Progress, autocast, describe_hardware, log_to_file, resolve_precision, rng_state,
                      select_device, set_rng_state, set_seed, setup_logging)

logger = logging.getLogger("visionft")


@dataclass
class TrainResult:
    """一次训练的结果：运行文件夹、results.json 的内容、逐 epoch 指标。"""

    run_dir: Path
    results: dict
    history: list[dict]


class TrainingError(RuntimeError):
    """训练无法继续（例如显存不足、恢复状态损坏）；消息里写明原因和下一步怎么做。"""


class TrainingInterrupted(KeyboardInterrupt):
    """训练被 Ctrl-C 中断；中断前已保存可恢复的检查点。"""


class _StopRequest:
    """把 Ctrl-C 推迟到当前 batch 结束：模型、优化器和随机数状态在那一刻彼此一致，保存的检查点才能原样恢复。

    第二次 Ctrl-C 立即抛出 KeyboardInterrupt（这时不保存 epoch 中途的状态，恢复时用最近一个 epoch 结束时的检查点）。
    只在主线程里生效；其他线程里调用 train 时，Ctrl-C 照常立即中断。
    """

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("收到 Ctrl-C：当前 batch 结束后保存检查点并退出（再按一次立即退出，只保留最近一个 epoch 的检查点）。")

    def check(self) -> None:
        if self.requested:
            raise _GracefulStop


class _GracefulStop(KeyboardInterrupt):
    """在 batch 之间响应 Ctrl-C：这时的状态是一致的，可以保存。"""


def _image_stats(model_name: str) -> tuple[list[float], list[float]]:
    """骨干网络预处理用的均值和标准差；读不到 preprocessor_config.json 时用 ImageNet 的值。"""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(model_name)
        return list(processor.image_mean), list(processor.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        logger.info("没有读到 %s 的图像预处理配置，使用 ImageNet 的均值和标准差。", model_name)
        return list(data_lib.IMAGENET_MEAN), list(data_lib.IMAGENET_STD)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, list[dict]]:
    if config.method == "full":
        groups = full_parameter_groups(model, config)
    else:
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay, "lr": config.lr},
                  {"params": no_decay, "weight_decay": 0.0, "lr": config.lr}]
    return torch.optim.AdamW(groups, lr=config.lr), groups


def _make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """线性预热后余弦衰减到 0；按优化器步数计。"""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _format_layer_lrs(groups: list[dict], num_blocks: int) -> str:
    seen: dict[int, float] = {}
    for group in groups:
        seen.setdefault(group["layer"], group.get("initial_lr", group["lr"]))
    parts = [f"{layer_name(layer, num_blocks)} {seen[layer]:.2e}" for layer in sorted(seen)]
    if len(parts) > 6:
        parts = parts[:2] + ["……"] + parts[-3:]
    return "，".join(parts)


class _Checkpointer:
    """可恢复状态（last/）与最佳模型（best/）的读写。都先写临时文件夹、再整体换上，最后写 COMPLETE 标记。"""

    def __init__(self, run_dir: Path, config: TrainConfig):
        self.run_dir = run_dir
        self.config = config

    def _trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.config.method == "lora":
            names = {name for name, p in model.named_parameters() if p.requires_grad}
            state = {name: tensor for name, tensor in model.state_dict().items() if name in names}
        else:
            state = model.state_dict()
        return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}

    def _write_dir(self, name: str, write) -> None:
        """让 write(临时文件夹) 写好内容，标记 COMPLETE，再整体换成 <run_dir>/<name>。"""
        tmp = self.run_dir / f"{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write(tmp)
        mark_complete(tmp)
        replace_dir(tmp, self.run_dir / name)

    def save_last(self, model, optimizer, scheduler, scaler, state: dict) -> None:
        from safetensors.torch import save_file

        def write(folder: Path) -> None:
            save_file(self._trainable_state(model), str(folder / "model.safetensors"))
            payload = dict(state)
            payload["optimizer"] = optimizer.state_dict()
            payload["scheduler"] = scheduler.state_dict()
            payload["scaler"] = scaler.state_dict() if scaler is not None else None
            torch.save(payload, folder / "trainer_state.pt")

        self._write_dir("last", write)

    def load_last(self, model, optimizer, scheduler, scaler) -> dict | None:
        from safetensors.torch import load_file

        folder = find_checkpoint_dir(self.run_dir / "last")
        if folder is None:
            return None
        weights = load_file(str(folder / "model.safetensors"))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise TrainingError(f"恢复状态 {display_path(folder)} 里有模型没有的权重（例如 {unexpected[:3]}）：它不是这个运行保存的。")
        # 只装张量、数字、字符串和列表；weights_only=True 拒绝任意 pickle 对象
        try:
            payload = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise TrainingError(
                f"恢复状态 {display_path(folder / 'trainer_state.pt')} 已损坏或含有不安全的对象，拒绝读取：{error}。"
                "可以删掉 last/ 文件夹后用 --resume 从头训练，或新开一次训练。"
            ) from error
        optimizer.load_state_dict(payload.pop("optimizer"))
        scheduler.load_state_dict(payload.pop("scheduler"))
        scaler_state = payload.pop("scaler")
        if scaler is not None and scaler_state is not None:
            scaler.load_state_dict(scaler_state)
        return payload

    def save_best(self, model, id2label, mean, std, extra: dict) -> None:
        self._write_dir("best", lambda folder: save_best(model, folder, self.config, id2label, mean, std, extra))


def _prepare_run(config: TrainConfig | None, resume: str | Path | None) -> tuple[TrainConfig, Path | None]:
    """返回 (配置, 运行文件夹)。新训练的运行文件夹要等数据检查通过后才创建，这里返回 None。"""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{display_path(run_dir)} 不是 visionft 的运行文件夹（缺少 config.yaml），无法恢复训练。")
        return load_config(run_dir / "config.yaml"), run_dir
    if config is None:
        raise ConfigError("train() 需要 config，或用 resume 指定要恢复的运行文件夹。")
    return validate(dataclasses.replace(config)), None


def train(config: TrainConfig | None = None, resume: str | Path | None = None) -> TrainResult:
    """按 config 训练（或从 resume 指定的运行文件夹继续），返回 TrainResult。"""
    setup_logging()
    config, run_dir = _prepare_run(config, resume)
    if run_dir is not None and (run_dir / "results.json").is_file():
        logger.info("%s 已经训练完成，不需要恢复。", display_path(run_dir))
        return TrainResult(run_dir, read_json(run_dir / "results.json"), read_jsonl(run_dir / "metrics.jsonl"))
    return _train(config, run_dir)


def _train(config: TrainConfig, run_dir: Path | None) -> TrainResult:
    # 随机种子与设备
    resuming = run_dir is not None
    set_seed(config.seed)
    device = select_device(config.device)
    dtype = resolve_precision(config.mixed_precision, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    # 数据：扫描、划分（恢复训练时沿用保存的划分）、DataLoader
    scan = data_lib.scan_image_folder(config.data_dir)
    if resuming:
        saved = read_json(run_dir / "split.json")
        split = data_lib.Split.from_json(saved)
        scan.classes = saved["classes"]
    else:
        split_dir = data_lib.find_split_dir(Path(config.data_dir), config.split_dir)
        split = data_lib.make_split(scan, split_dir, config.val_fraction, config.test_fraction, config.seed)
    if config.max_train_images is not None and config.max_train_images < len(scan.classes):
        raise ConfigError(
            f"配置项 max_train_images={config.max_train_images} 小于类别数 {len(scan.classes)}：每个类别至少要有一张训练图像。"
            f"允许范围：[{len(scan.classes)}, ∞)，或设为 null 使用全部图像。"
        )
    if config.max_train_images is not None:
        split.train = data_lib.stratified_subset(split.train, config.max_train_images)
        data_lib.check_split(split, scan.classes)
    if config.batch_size > len(split.train):
        raise ConfigError(
            f"配置项 batch_size={config.batch_size} 大于训练集的图像数 {len(split.train)}。"
            f"允许范围：[1, {len(split.train)}]，请用 --batch_size 调小。"
        )

    # 运行文件夹：数据检查通过后才新建，日志同时写进其中的 train.log
    if run_dir is None:
        run_dir = create_run_dir(config.output_dir, config.run_name or f"{config.method}-{config.profile}-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        with log_to_file(run_dir / "train.log"):
            return _train_in_run_dir(config, run_dir, resuming, scan, split, device, dtype, scaler)
    except (ConfigError, ModelLoadError):
        # 模型加载或 LoRA 设置有误时还没有训练任何东西：删掉刚建的空运行文件夹，免得留下一堆无用的文件夹
        if not resuming and not (run_dir / "best").exists() and not (run_dir / "last").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train_in_run_dir(config, run_dir, resuming, scan, split, device, dtype, scaler) -> TrainResult:
    id2label = dict(enumerate(scan.classes))

    # 模型：加载骨干，按方法准备
    model = load_backbone(config.model, id2label)
    mean, std = _image_stats(config.model)
    model = prepare_model(model, config)
    model.to(device)
    anatomy = describe_model(model.get_base_model() if config.method == "lora" else model)

    # 优化器与学习率计划
    optimizer, groups = _make_optimizer(model, config)
    train_set = data_lib.ImageListDataset(scan.root, split.train, data_lib.build_transforms(config.image_size, mean, std, True))
    eval_transform = data_lib.build_transforms(config.image_size, mean, std, False)
    val_set = data_lib.ImageListDataset(scan.root, split.val, eval_transform)
    sampler = data_lib.EpochSampler(len(train_set), config.seed)
    train_loader = data_lib.make_loader(train_set, config.batch_size, config.num_workers, sampler)
    val_loader = data_lib.make_loader(val_set, config.batch_size, config.num_workers)
    batches_per_epoch = math.ceil(len(train_set) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum_steps)
    scheduler = _make_scheduler(optimizer, steps_per_epoch * config.num_epochs, config.warmup_ratio)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    # 记录：配置、类别名、划分
    checkpointer = _Checkpointer(run_dir, config)
    if not resuming:
        save_config(config, run_dir / "config.yaml")
        atomic_write_json(run_dir / "labels.json", data_lib.label_names(scan.classes))
        atomic_write_json(run_dir / "split.json", split.to_json(scan))
    state = {"epoch": 0, "batch": 0, "best_val_accuracy": -1.0, "best_val_loss": float("inf"), "best_epoch": 0,
             "train_seconds": 0.0, "step_seconds": 0.0, "images_seen": 0, "loss_sum": 0.0, "correct": 0, "seen": 0,
             "peak_memory_bytes": 0, "resumed_times": 0}
    if resuming:
        loaded = checkpointer.load_last(model, optimizer, scheduler, scaler)
        if loaded is None:
            logger.info("%s 里没有完整的恢复状态，从头开始训练。", display_path(run_dir))
        else:
            set_rng_state(loaded.pop("rng"))
            state.update(loaded)
            state["resumed_times"] += 1
            logger.info("从 %s 恢复：epoch %d，第 %d 个 batch 之后继续。", display_path(run_dir), state["epoch"] + 1, state["batch"])
    history = [record for record in read_jsonl(run_dir / "metrics.jsonl") if record["epoch"] <= state["epoch"]]
    if resuming:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        for record in history:
            append_jsonl(run_dir / "metrics.jsonl", record)

    if config.method == "full":
        apply_unfreeze(model, config.unfreeze_schedule, state["epoch"])
    if config.method == "lora" and config.unfreeze_schedule:
        logger.warning("unfreeze_schedule 只对 full 方法有效，LoRA 训练会忽略它。")
    _log_start(config, run_dir, scan, split, model, anatomy, groups, device, dtype, steps_per_epoch)

    # 逐 epoch 训练与验证
    boundary = {"state": dict(state), "rng": rng_state()}
    # 从 epoch 中途恢复时，保存的 train_seconds 已含本 epoch 中断前的时间；先拿出来，epoch 结束时再加回去
    resumed_epoch_seconds = None
    if state["batch"] > 0:
        resumed_epoch_seconds = state["train_seconds"] - state.get("epoch_start_seconds", state["train_seconds"])
        state["train_seconds"] = state.get("epoch_start_seconds", state["train_seconds"])
    with PeakMemory(device) as memory, _StopRequest() as stop:
        memory.peak_bytes = max(memory.peak_bytes, state["peak_memory_bytes"])
        try:
            for epoch in range(state["epoch"], config.num_epochs):
                unfrozen = apply_unfreeze(model, config.unfreeze_schedule, epoch) if config.method == "full" else None
                trainable, total = count_parameters(model)
                epoch_started = time.perf_counter()
                epoch_lr = max(group["lr"] for group in optimizer.param_groups)
                train_metrics = _train_one_epoch(model, train_loader, sampler, optimizer, scheduler, scaler, loss_fn,
                                                 device, dtype, config, state, epoch, batches_per_epoch, boundary, stop)
                val = predict_loader(model, val_loader, device, dtype, description="验证", progress=config.progress)
                val_metrics = compute_metrics(val["labels"], val["predictions"], scan.classes)
                # 从 epoch 中途恢复时，加上中断前这个 epoch 已用的时间
                epoch_seconds = time.perf_counter() - epoch_started + (resumed_epoch_seconds or 0.0)
                resumed_epoch_seconds = None
                state["train_seconds"] += epoch_seconds

                # 最佳检查点：验证准确率更高，或一样高而验证 loss 更低时才替换
                improved = (val_metrics["accuracy"], -val["loss"]) > (state["best_val_accuracy"], -state["best_val_loss"])
                if improved:
                    state.update(best_val_accuracy=val_metrics["accuracy"], best_val_loss=val["loss"], best_epoch=epoch + 1)
                    checkpointer.save_best(model, id2label, mean, std,
                                           {"epoch": epoch + 1, "val_accuracy": val_metrics["accuracy"], "val_loss": val["loss"]})
                record = {
                    "epoch": epoch + 1,
                    **train_metrics,
                    "val_loss": round(val["loss"], 5),
                    "val_accuracy": round(val_metrics["accuracy"], 5),
                    "val_macro_f1": round(val_metrics["macro_f1"], 5),
                    "lr": epoch_lr,
                    "trainable_params": trainable,
                    "unfrozen_blocks": unfrozen,
                    "epoch_seconds": round(epoch_seconds, 1),
                    "best": improved,
                }
                history.append(record)
                append_jsonl(run_dir / "metrics.jsonl", record)
                _log_epoch(record, config.num_epochs, anatomy.num_blocks)

                # 可恢复状态：下一个 epoch 从第 0 个 batch 开始
                state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, correct=0, seen=0, peak_memory_bytes=memory.peak_bytes)
                boundary = {"state": dict(state), "rng": rng_state()}
                checkpointer.save_last(model, optimizer, scheduler, scaler, {**state, "rng": boundary["rng"]})
                stop.check()
        except _GracefulStop:
            _save_interrupt(checkpointer, model, optimizer, scheduler, scaler, boundary, memory)
            logger.warning("训练被中断，已保存检查点。继续训练：python -m visionft train --resume %s", display_path(run_dir))
            raise TrainingInterrupted(str(run_dir)) from None
        except KeyboardInterrupt:
            # 第二次 Ctrl-C 可能打断在参数更新的半途，这时的权重不可信，不保存；last/ 里是最近一个 epoch 结束时的状态
            logger.warning("训练被立即中断，未保存 epoch 中途的状态。继续训练：python -m visionft train --resume %s",
                           display_path(run_dir))
            raise TrainingInterrupted(str(run_dir)) from None
        except torch.OutOfMemoryError as error:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _save_interrupt(checkpointer, model, optimizer, scheduler, scaler, boundary, memory)
            raise TrainingError(_oom_advice(config, run_dir)) from error
    peak_mb, peak_kind = memory.peak_mb, memory.kind

    # 用最佳检查点在测试集上评估
    return _finish(config, run_dir, scan, split, history, state, peak_mb, peak_kind, device, dtype, train_set, val_set)


def _train_one_epoch(model, loader, sampler, optimizer, scheduler, scaler, loss_fn, device, dtype, config, state,
                     epoch, batches_per_epoch, boundary, stop) -> dict:
    """训练一个 epoch，返回平均 loss、准确率和吞吐量；每次优化器更新后把可恢复的位置记进 boundary。"""
    model.train()
    started = time.perf_counter()
    seconds_before = state["train_seconds"]
    start_batch = state["batch"]
    sampler.set_epoch(epoch, start_index=start_batch * config.batch_size)
    bar = Progress(batches_per_epoch, f"epoch {epoch + 1}/{config.num_epochs}", mode=config.progress, start=start_batch)
    optimizer.zero_grad(set_to_none=True)
    batch_index = start_batch
    pending = 0
    for batch in loader:
        batch_index += 1
        loader.dataset.record_failed(batch.failed)
        if batch.images is None:
            bar.update()
            if pending and batch_index == batches_per_epoch:
                _optimizer_step(model, optimizer, scheduler, scaler, config)
                pending = 0
            continue
        step_started = time.perf_counter()
        images, labels = batch.images.to(device), batch.labels.to(device)

        # 前向与反向（梯度累积时 loss 按步数缩小）
        with autocast(device, dtype):
            logits = logits_for(model, images)
        loss = loss_fn(logits.float(), labels)
        if scaler is not None:
            scaler.scale(loss / config.grad_accum_steps).backward()
        else:
            (loss / config.grad_accum_steps).backward()
        pending += 1

        # 累积够了（或到了 epoch 末尾）就更新一次参数
        if pending == config.grad_accum_steps or batch_index == batches_per_epoch:
            _optimizer_step(model, optimizer, scheduler, scaler, config)
            pending = 0

        # 统计
        state["loss_sum"] += loss.item() * len(labels)
        state["correct"] += (logits.argmax(dim=-1) == labels).sum().item()
        state["seen"] += len(labels)
        state["images_seen"] += len(labels)
        state["step_seconds"] += time.perf_counter() - step_started
        state["batch"] = batch_index
        if pending == 0:
            # 中断时保存的是这一刻的状态；把本 epoch 已用的时间也算进去，恢复后 train_seconds 不会少算
            boundary["state"] = {**state, "train_seconds": seconds_before + time.perf_counter() - started,
                                 "epoch_start_seconds": seconds_before}
            boundary["rng"] = rng_state()
            stop.check()
        bar.update(loss=f"{loss.item():.3f}")
    bar.close()
    seen = max(state["seen"], 1)
    return {
        "train_loss": round(state["loss_sum"] / seen, 5),
        "train_accuracy": round(state["correct"] / seen, 5),
        "images_per_second": round(state["images_seen"] / max(state["step_seconds"], 1e-9), 2),
    }


def _optimizer_step(model, optimizer, scheduler, scaler, config) -> None:
    """梯度裁剪、更新参数、推进学习率计划、清零梯度。"""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _save_interrupt(checkpointer, model, optimizer, scheduler, scaler, boundary, memory) -> None:
    """中断时保存最近一次优化器更新之后的状态：模型与优化器在那一刻是一致的。"""
    state = dict(boundary["state"])
    state["peak_memory_bytes"] = memory.peak_bytes
    checkpointer.save_last(model, optimizer, scheduler, scaler, {**state, "rng": boundary["rng"]})


def _oom_advice(config: TrainConfig, run_dir: Path) -> str:
    tips = [f"减小 batch size：--batch_size {max(1, config.batch_size // 2)}",
            f"用梯度累积保持有效 batch size：--grad_accum_steps {config.grad_accum_steps * 2}",
            "打开梯度检查点：--gradient_checkpointing true",
            "减小输入尺寸：--image_size 112",
            "使用混合精度：--mixed_precision bf16（或 fp16）"]
    if config.method == "full":
        tips.append("改用 LoRA：--config code/configs/lora_quick.yaml，只训练约 1% 的参数")
    return ("显存不足（CUDA out of memory）。已保存检查点，可以调整后用 --resume "
            f"{display_path(run_dir)} 继续（恢复时沿用原配置），或新开一次训练。可以这样减少显存：\n  - " + "\n  - ".join(tips))


def _log_start(config, run_dir, scan, split, model, anatomy, groups, device, dtype, steps_per_epoch) -> None:
    trainable, total = count_parameters(model)
    precision = {None: "FP32", torch.bfloat16: "BF16 混合精度", torch.float16: "FP16 混合精度"}[dtype]
    logger.info("运行文件夹：%s", display_path(run_dir))
    logger.info("设备：%s（%s），%s", device, describe_hardware(device), precision)
    logger.info("数据：%s，%d 个类别；训练 %d 张，验证 %d 张，测试 %d 张（%s划分）",
                display_path(scan.root), len(scan.classes), len(split.train), len(split.val), len(split.test),
                "官方" if split.source == "official" else "分层随机")
    logger.info("训练：%d 个 epoch，batch size %d × 累积 %d = 有效 batch size %d，每个 epoch %d 步，图像 %d×%d",
                config.num_epochs, config.batch_size, config.grad_accum_steps, config.batch_size * config.grad_accum_steps,
                steps_per_epoch, config.image_size, config.image_size)
    logger.info("参数：可训练 %s / 总数 %s（%.2f%%）%s", f"{trainable:,}", f"{total:,}", 100 * trainable / total,
                "，这是当前 epoch 的解冻状态" if config.method == "full" and config.unfreeze_schedule else "")
    if config.method == "full":
        logger.info("逐层学习率（layer_decay=%.2f）：%s", config.layer_decay, _format_layer_lrs(groups, anatomy.num_blocks))
        if config.unfreeze_schedule:
            logger.info("渐进解冻：各 epoch 可训练的顶部 block 数 %s（共 %d 个 block）", config.unfreeze_schedule, anatomy.num_blocks)
    if scan.skipped:
        logger.warning("扫描时跳过了 %d 个无法解码的文件，详见 split.json。", len(scan.skipped))


def _log_epoch(record: dict, num_epochs: int, num_blocks: int) -> None:
    unfrozen = ""
    if record["unfrozen_blocks"] is not None:
        unfrozen = f"  可训练 block {record['unfrozen_blocks']}/{num_blocks}"
    logger.info(
        "epoch %d/%d  train_loss %.4f  train_acc %.3f  val_loss %.4f  val_acc %.3f  lr %.2e  %.0f 图/秒  %.0fs%s%s",
        record["epoch"], num_epochs, record["train_loss"], record["train_accuracy"], record["val_loss"],
        record["val_accuracy"], record["lr"], record["images_per_second"], record["epoch_seconds"], unfrozen,
        "  ★ 最佳，已保存" if record["best"] else "",
    )


def _finish(config, run_dir, scan, split, history, state, peak_mb, peak_kind, device, dtype, train_set, val_set) -> TrainResult:
    import peft
    import transformers

    model, meta = load_trained_model(run_dir / "best")
    model.to(device)
    mean, std = meta["image_mean"], meta["image_std"]
    test_set = data_lib.ImageListDataset(scan.root, split.test, data_lib.build_transforms(config.image_size, mean, std, False))
    test_loader = data_lib.make_loader(test_set, config.batch_size, config.num_workers)
    outputs = predict_loader(model, test_loader, device, dtype, description="测试", progress=config.progress)
    names = data_lib.class_display_names(scan.classes, config.label_language)
    metrics = compute_metrics(outputs["labels"], outputs["predictions"], names)
    skipped = len(scan.skipped) + len(train_set.failed) + len(val_set.failed) + len(test_set.failed)
    metrics.update(split="test", data_dir=display_path(scan.root), skipped_images=skipped)
    write_evaluation(metrics, run_dir / "evaluation" / "test", title=f"混淆矩阵（测试集，准确率 {metrics['accuracy']:.3f}）")

    trainable = max(record["trainable_params"] for record in history)
    total = count_parameters(model)[1]
    results = {
        "method": config.method,
        "model": config.model,
        "backbone": type(model.get_base_model() if config.method == "lora" else model).__name__,
        "data_dir": display_path(scan.root),
        "split": split.source,
        "num_classes": len(scan.classes),
        "num_train_images": len(split.train),
        "num_val_images": len(split.val),
        "num_test_images": len(split.test),
        "image_size": config.image_size,
        "num_epochs": config.num_epochs,
        "effective_batch_size": config.batch_size * config.grad_accum_steps,
        "test_accuracy": round(metrics["accuracy"], 5),
        "test_macro_f1": round(metrics["macro_f1"], 5),
        "test_loss": round(outputs["loss"], 5),
        "best_val_accuracy": round(state["best_val_accuracy"], 5),
        "best_epoch": state["best_epoch"],
        "train_seconds": round(state["train_seconds"], 1),
        "images_per_second": round(state["images_seen"] / max(state["step_seconds"], 1e-9), 2),
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_ratio": round(trainable / total, 6),
        # 按参数量计算（不是测量）：FP32 权重 + 可训练参数的梯度 + AdamW 的两份动量，不含激活值
        "training_state_mb": round((total * 4 + trainable * (4 + 8)) / 2**20, 1),
        "device": device.type,
        "hardware": describe_hardware(device),
        "mixed_precision": {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
        "skipped_images": skipped,
        "resumed_times": state["resumed_times"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_json(run_dir / "results.json", results)
    logger.info("测试集：准确率 %.4f，macro-F1 %.4f（%d 张）。训练用时 %.0f 秒，峰值内存 %.0f MB。",
                metrics["accuracy"], metrics["macro_f1"], metrics["num_images"], results["train_seconds"], peak_mb)
    if skipped:
        logger.warning("本次运行共跳过 %d 个无法读取的文件。", skipped)
    logger.info("结果写入 %s", display_path(run_dir))
    return TrainResult(run_dir, results, history)
