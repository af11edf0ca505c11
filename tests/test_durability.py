"""中断与恢复、原子写入、最佳检查点、安全读取、显存不足与混合精度回退。

恢复的容差：num_workers=0、FP32、单线程时，恢复后的运行与不中断的运行逐 epoch 指标相同，
loss 的差别小于 1e-5（实测为 0，留一点余量给不同的浮点归约顺序）。
"""

import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder, tiny_config
from visionft import train
from visionft.io import atomic_write_json, find_checkpoint_dir, mark_complete, read_jsonl, replace_dir
from visionft.model import ModelLoadError, load_trained_model, merge_lora
from visionft.train import TrainingError, TrainingInterrupted

LOSS_TOLERANCE = 1e-5


def history_of(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def assert_same_history(resumed: list[dict], reference: list[dict]) -> None:
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in reference]
    for got, expected in zip(resumed, reference):
        assert got["val_accuracy"] == expected["val_accuracy"]
        assert abs(got["val_loss"] - expected["val_loss"]) < LOSS_TOLERANCE
        assert abs(got["train_loss"] - expected["train_loss"]) < LOSS_TOLERANCE


@pytest.fixture
def data_dir(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=12)


class Crash(BaseException):
    """模拟 kill -9：不是 KeyboardInterrupt，训练代码来不及保存任何东西。"""


def before_forward(monkeypatch, calls: int, action):
    """在训练的第 calls 次前向计算之前调用 action（抛出异常，或者给自己发信号）。"""
    train_module = importlib.import_module("visionft.train")

    original = train_module.logits_for
    counter = {"n": 0}

    def patched(model, images):
        counter["n"] += 1
        if counter["n"] == calls and model.training:
            action()
        return original(model, images)

    monkeypatch.setattr(train_module, "logits_for", patched)


def crash_after(monkeypatch, calls: int, error):
    """让训练在第 calls 次前向计算时抛出 error。"""

    def fail():
        raise error()

    before_forward(monkeypatch, calls, fail)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_crash_matches(monkeypatch, tiny_model_dir, data_dir, tmp_path, method):
    settings = dict(method=method, num_epochs=3, unfreeze_schedule=[1, 2] if method == "full" else None)
    reference = train(tiny_config(tiny_model_dir("dinov2"), data_dir, tmp_path / "a", **settings))

    # 第 2 个 epoch 中途"被杀"：只剩第 1 个 epoch 结束时的检查点
    crash_after(monkeypatch, calls=5 + 3 + 2, error=Crash)
    with pytest.raises(Crash):
        train(tiny_config(tiny_model_dir("dinov2"), data_dir, tmp_path / "b", **settings))
    monkeypatch.undo()
    run_dir = tmp_path / "b" / "run"
    assert not (run_dir / "results.json").exists()
    assert find_checkpoint_dir(run_dir / "last") is not None

    resumed = train(resume=run_dir)
    assert_same_history(history_of(run_dir), reference.history)
    assert resumed.results["test_accuracy"] == reference.results["test_accuracy"]
    assert resumed.results["resumed_times"] == 1


def make_noise_folder(root: Path, per_class: int = 16) -> Path:
    """纯噪声图像：学不会，loss 一直在 1 左右，随机数稍有不同就会体现在指标上。"""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_ctrl_c_saves_mid_epoch(monkeypatch, tiny_model_dir, tmp_path):
    data_dir = make_noise_folder(tmp_path / "noise")
    settings = dict(method="lora", num_epochs=2, lora_dropout=0.5)
    reference = train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path / "a", **settings))

    # 第 3 个 batch 的前向计算之前按下 Ctrl-C：这个 batch 照常做完，然后保存检查点退出
    before_forward(monkeypatch, calls=3, action=lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path / "b", **settings))
    monkeypatch.undo()
    run_dir = tmp_path / "b" / "run"
    state = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 0
    assert state["batch"] == 3

    train(resume=run_dir)
    assert_same_history(history_of(run_dir), reference.history)


def test_second_ctrl_c_skips_mid_epoch_save(monkeypatch, tiny_model_dir, data_dir, tmp_path):
    # 第二次 Ctrl-C（这里直接抛 KeyboardInterrupt）可能打在参数更新半途：不保存 epoch 中途的状态
    crash_after(monkeypatch, calls=8 + 2, error=KeyboardInterrupt)
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path, num_epochs=2))
    state = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert state["batch"] == 0


def _write_yaml(config, path: Path) -> Path:
    values = {key: getattr(config, key) for key in config.__dataclass_fields__}
    path.write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
    return path


def _start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "visionft", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"训练进程提前结束：{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("等待训练进度超时")
        time.sleep(0.02)


def test_kill_9_then_resume_from_cli(tiny_model_dir, tmp_path):
    data_dir = make_image_folder(tmp_path / "data", per_class=40, size=(64, 64))
    config = tiny_config(tiny_model_dir("dinov2"), data_dir, tmp_path / "runs", method="full", num_epochs=4,
                         image_size=64, batch_size=2)
    config_file = _write_yaml(config, tmp_path / "config.yaml")
    run_dir = tmp_path / "runs" / "run"

    process = _start_cli(["train", "--config", str(config_file)], tmp_path)
    _wait_for(lambda: len(read_jsonl(run_dir / "metrics.jsonl")) >= 1 and (run_dir / "last" / "COMPLETE").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (run_dir / "results.json").exists(), "训练在被杀之前就结束了：加大数据量再测"

    resume = _start_cli(["train", "--resume", str(run_dir)], tmp_path)
    output, _ = resume.communicate(timeout=600)
    assert resume.returncode == 0, output
    assert "恢复" in output
    resumed_history = history_of(run_dir)

    torch.set_num_threads(1)
    reference = train(config.__class__(**{**config.__dict__, "output_dir": str(tmp_path / "reference")}))
    assert_same_history(resumed_history, reference.history)


def test_sigint_exits_130_with_checkpoint(tiny_model_dir, tmp_path):
    data_dir = make_image_folder(tmp_path / "data", per_class=40, size=(64, 64))
    config = tiny_config(tiny_model_dir("vit"), data_dir, tmp_path / "runs", num_epochs=5, image_size=64, batch_size=2)
    config_file = _write_yaml(config, tmp_path / "config.yaml")
    run_dir = tmp_path / "runs" / "run"

    process = _start_cli(["train", "--config", str(config_file)], tmp_path)
    _wait_for(lambda: len(read_jsonl(run_dir / "metrics.jsonl")) >= 1, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "--resume" in output
    assert find_checkpoint_dir(run_dir / "last") is not None


# ---------------------------------------------------------------------------
# 原子写入与最佳检查点


def test_atomic_write_keeps_old_file_on_crash(monkeypatch, tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"test_accuracy": 0.5})

    def broken_replace(src, dst):
        raise OSError("磁盘在换文件时出错")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_json(target, {"test_accuracy": 0.9})
    monkeypatch.undo()
    assert json.loads(target.read_text(encoding="utf-8")) == {"test_accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_interrupted_dir_swap_recovers_old(tmp_path):
    old = tmp_path / "last.old"
    old.mkdir()
    mark_complete(old)
    half = tmp_path / "last.tmp"
    half.mkdir()  # 没有 COMPLETE：写了一半
    assert find_checkpoint_dir(tmp_path / "last") == old


def test_replace_dir_swaps_complete_folder(tmp_path):
    final = tmp_path / "best"
    final.mkdir()
    (final / "a.txt").write_text("old")
    new = tmp_path / "best.tmp"
    new.mkdir()
    (new / "a.txt").write_text("new")
    mark_complete(new)
    replace_dir(new, final)
    assert (final / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_best_checkpoint_is_best_epoch(tiny_model_dir, tmp_path):
    # 纯噪声图像：验证准确率会上下波动，正好检验"更差的 epoch 不替换 best/"
    make_noise_folder(tmp_path / "noise")
    result = train(tiny_config(tiny_model_dir("dinov2"), tmp_path / "noise", tmp_path / "runs", method="full",
                               num_epochs=6, lr=5e-2))
    history = result.history
    best_accuracy = -1.0
    for record in history:
        if record["best"]:
            assert record["val_accuracy"] >= best_accuracy
            best_accuracy = record["val_accuracy"]
        else:
            assert record["val_accuracy"] <= best_accuracy
    meta = json.loads((result.run_dir / "best" / "visionft.json").read_text(encoding="utf-8"))
    assert meta["epoch"] == max(r["epoch"] for r in history if r["best"])
    assert meta["val_accuracy"] == pytest.approx(best_accuracy, abs=1e-5)
    assert not all(r["best"] for r in history), "每个 epoch 都更好，这个测试没有检验到替换规则"


# ---------------------------------------------------------------------------
# 安全读取与不匹配的检查点


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo hacked > hacked.txt",))


def test_resume_rejects_pickled_code(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    result = train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path, num_epochs=1))
    run_dir = result.run_dir
    (run_dir / "results.json").unlink()
    with open(run_dir / "last" / "trainer_state.pt", "wb") as handle:
        pickle.dump({"optimizer": Exploit()}, handle)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingError, match="不安全"):
        train(resume=run_dir)
    assert not (tmp_path / "hacked.txt").exists()


def test_loader_rejects_non_safetensors(tiny_model_dir, data_dir, tmp_path):
    result = train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path))
    best = result.run_dir / "best"
    (best / "adapter_model.safetensors").rename(best / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_trained_model(best)


def test_package_never_trusts_remote_code():
    package = Path(__file__).resolve().parents[1] / "code" / "visionft"
    for path in package.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "trust_remote_code=True" not in text, path.name
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"


def test_adapter_on_other_backbone_names_both(tiny_model_dir, data_dir, tmp_path):
    result = train(tiny_config(tiny_model_dir("dinov2"), data_dir, tmp_path))
    with pytest.raises(ModelLoadError) as error:
        load_trained_model(result.run_dir / "best", base_model=str(tiny_model_dir("vit")))
    message = str(error.value)
    assert "dinov2" in message
    assert "vit" in message


def test_evaluate_rejects_unknown_breeds(tiny_model_dir, data_dir, tmp_path):
    from visionft import evaluate
    from visionft.data import DataError

    result = train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path))
    other = make_image_folder(tmp_path / "other", classes=("cat_a", "cat_b", "cat_c", "new_breed"), per_class=2)
    with pytest.raises(DataError, match="new_breed"):
        evaluate(result.run_dir, data_dir=str(other))


def test_breed_names_survive_reload_and_merge(tiny_model_dir, data_dir, tmp_path):
    result = train(tiny_config(tiny_model_dir("dinov2"), data_dir, tmp_path))
    model, meta = load_trained_model(result.run_dir / "best")
    merged = merge_lora(model)
    assert merged.config.id2label == {0: "cat_a", 1: "cat_b", 2: "cat_c"}
    assert meta["id2label"] == {"0": "cat_a", "1": "cat_b", "2": "cat_c"}
    merged.save_pretrained(tmp_path / "merged")
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "merged")
    assert reloaded.config.id2label == {0: "cat_a", 1: "cat_b", 2: "cat_c"}


# ---------------------------------------------------------------------------
# 设备、精度与显存


def test_fp16_on_cpu_falls_back(visionft_log):
    from visionft.runtime import resolve_precision

    assert resolve_precision("fp16", torch.device("cpu")) is None
    assert "回退到 FP32" in visionft_log.text


def test_out_of_memory_gives_advice(monkeypatch, tiny_model_dir, data_dir, tmp_path):
    crash_after(monkeypatch, calls=2, error=lambda: torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(TrainingError) as error:
        train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path, method="full"))
    message = str(error.value)
    for advice in ("--batch_size", "--grad_accum_steps", "--gradient_checkpointing true", "LoRA"):
        assert advice in message
    assert find_checkpoint_dir(tmp_path / "run" / "last") is not None


def test_gradient_checkpointing_trains_lora(tiny_model_dir, data_dir, tmp_path):
    from visionft.model import load_backbone, logits_for, prepare_model

    config = tiny_config(tiny_model_dir("dinov2"), data_dir, tmp_path, gradient_checkpointing=True)
    model = prepare_model(load_backbone(config.model, {0: "a", 1: "b"}), config)
    model.train()
    loss = logits_for(model, torch.randn(2, 3, 16, 16)).sum()
    loss.backward()
    # B 初始化为 0，所以第一步只有 lora_B 的梯度非零；lora_A 的梯度存在但为 0
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert grads
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_run_without_weights_explains(tiny_model_dir, data_dir, tmp_path, capsys):
    import shutil

    from visionft.cli import main

    result = train(tiny_config(tiny_model_dir("vit"), data_dir, tmp_path))
    shutil.rmtree(result.run_dir / "best")  # 课程仓库里提交的运行文件夹就是这样：有指标，没有权重
    capsys.readouterr()

    assert main(["evaluate", str(result.run_dir)]) == 2
    assert "重新训练" in capsys.readouterr().err
    image = next((data_dir / "cat_a").iterdir())
    assert main(["predict", str(result.run_dir), str(image)]) == 2
    assert "重新训练" in capsys.readouterr().err


def test_evaluate_rejects_non_run_folder(tmp_path, capsys):
    from visionft.cli import main

    assert main(["evaluate", str(tmp_path)]) == 2
    assert "不是 visionft 的运行文件夹" in capsys.readouterr().err
