"""训练、保存与读回、评估和预测：在随机初始化的微型 DINOv2 与 ViT 上，用生成的彩色图像跑完整流程。"""

from __future__ import annotations

import importlib
import inspect
import json
import math

import pytest
import torch
from conftest import BACKBONE_KINDS, TINY_IMAGE_SIZE, make_image, make_image_folder, run_folders, tiny_config
from safetensors import safe_open

import visionft.runtime
from visionft.cli import main
from visionft.config import ConfigError
from visionft.data import class_display_names
from visionft.io import read_json, read_jsonl
from visionft.model import (ModelLoadError, describe_model, full_parameter_groups, layer_id, linear_module_names, load_backbone,
                            load_trained_model, prepare_lora)
from visionft.predict import Predictor, predict

# `visionft.train` 这个名字被包的 __init__ 导出的 train() 函数遮住了，所以按模块名取训练模块
train_module = importlib.import_module("visionft.train")

METHODS = ("lora", "full")
RESULT_KEYS = ("test_accuracy", "test_macro_f1", "train_seconds", "images_per_second", "peak_memory_mb",
               "trainable_params", "total_params")
RUN_DIR_ENTRIES = {"config.yaml", "labels.json", "split.json", "metrics.jsonl", "results.json", "train.log", "best",
                   "last", "evaluation"}
EVALUATION_FILES = {"metrics.json", "classification_report.txt", "confusion_matrix.png"}
# 每次运行都不同的计时字段，比较两次运行时忽略
TIMING_KEYS = {"images_per_second", "epoch_seconds"}


def probe_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(5, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator)


def logits_of(model, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(pixel_values=images).logits.float()


def train_and_capture(config):
    """训练一次，并记下准备好的模型在训练前的参数，以及每次保存 best/ 时模型的参数和探针输出。"""
    captured = {}
    original_prepare = train_module.prepare_model
    original_save = train_module.save_best

    def prepare_and_record(model, config):
        model = original_prepare(model, config)
        captured["before"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        return model

    def save_and_record(model, folder, *args, **kwargs):
        original_save(model, folder, *args, **kwargs)
        captured["saved"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        captured["trainable"] = {name for name, p in model.named_parameters() if p.requires_grad}
        captured["logits"] = logits_of(model, probe_images())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "prepare_model", prepare_and_record)
        patch.setattr(train_module, "save_best", save_and_record)
        result = train_module.train(config)
    captured["result"] = result
    return captured


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """返回函数 (method, kind) -> 训练记录。每种组合只训练一次，整个模块共用。"""
    cache = {}

    def get(method: str, kind: str):
        if (method, kind) not in cache:
            root = tmp_path_factory.mktemp(f"{method}-{kind}")
            data = make_image_folder(root / "data", per_class=8)
            config = tiny_config(tiny_model_dir(kind), data, root / "runs", method=method, num_epochs=2)
            cache[(method, kind)] = train_and_capture(config)
        return cache[(method, kind)]

    return get


CASES = [(method, kind) for method in METHODS for kind in BACKBONE_KINDS]


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_training_changes_trainable_parameters(trained, method, kind):
    record = trained(method, kind)
    before, after = record["before"], record["saved"]
    # DINOv2 的 mask_token 只在掩码预训练时用到，分类时拿不到梯度
    expected = [name for name in record["trainable"] if "mask_token" not in name]
    unchanged = [name for name in expected if torch.equal(before[name], after[name])]

    assert expected
    assert unchanged == []


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_lora_keeps_base_weights(trained, kind):
    record = trained("lora", kind)
    frozen = [name for name in record["saved"] if name not in record["trainable"]]
    changed = [name for name in frozen if not torch.equal(record["before"][name], record["saved"][name])]

    assert frozen
    assert changed == []


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_lora_b_nonzero_after_training(trained, kind):
    run_dir = trained("lora", kind)["result"].run_dir
    with safe_open(str(run_dir / "best" / "adapter_model.safetensors"), "pt") as handle:
        lora_b = {key: handle.get_tensor(key) for key in handle.keys() if "lora_B" in key}

    assert lora_b
    for key, tensor in lora_b.items():
        assert tensor.abs().sum() > 0, key


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_lora_adapter_holds_classifier(trained, kind):
    run_dir = trained("lora", kind)["result"].run_dir
    with safe_open(str(run_dir / "best" / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())

    assert any(key.endswith("classifier.weight") for key in keys)
    assert any(key.endswith("classifier.bias") for key in keys)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_reload_matches_saved_model(trained, method, kind):
    record = trained(method, kind)
    model, meta = load_trained_model(record["result"].run_dir / "best")

    torch.testing.assert_close(logits_of(model, probe_images()), record["logits"], rtol=1e-5, atol=1e-5)
    assert meta["method"] == method


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_run_folder_contents(trained, method, kind):
    run_dir = trained(method, kind)["result"].run_dir

    assert {path.name for path in run_dir.iterdir()} == RUN_DIR_ENTRIES
    assert {path.name for path in (run_dir / "evaluation").iterdir()} == {"test"}
    assert {path.name for path in (run_dir / "evaluation" / "test").iterdir()} == EVALUATION_FILES


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_best_checkpoint_files(trained, method, kind):
    best = trained(method, kind)["result"].run_dir / "best"
    names = {path.name for path in best.iterdir()}
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"

    assert weights in names
    assert "visionft.json" in names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_results_json_keys(trained, method, kind):
    run_dir = trained(method, kind)["result"].run_dir
    results = read_json(run_dir / "results.json")

    for key in RESULT_KEYS:
        assert key in results, key
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert 0 < results["trainable_params"] <= results["total_params"]


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_metrics_jsonl_one_line_per_epoch(trained, method, kind):
    run_dir = trained(method, kind)["result"].run_dir
    records = read_jsonl(run_dir / "metrics.jsonl")

    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:
        assert math.isfinite(record["train_loss"])


def test_lora_trains_fewer_parameters(trained):
    lora = read_json(trained("lora", "dinov2")["result"].run_dir / "results.json")
    full = read_json(trained("full", "dinov2")["result"].run_dir / "results.json")

    assert lora["trainable_params"] < full["trainable_params"]


def test_colour_classes_learned(trained):
    results = read_json(trained("lora", "dinov2")["result"].run_dir / "results.json")

    assert results["best_val_accuracy"] > 0.5


# ---------------------------------------------------------------------------
# 全量微调：渐进解冻与逐层学习率


@pytest.fixture(scope="module")
def unfreeze_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("unfreeze")
    data = make_image_folder(root / "data", per_class=8)
    config = tiny_config(tiny_model_dir("dinov2"), data, root / "runs", method="full", num_epochs=2,
                         unfreeze_schedule=[1, 2])
    return train_module.train(config)


def test_unfreeze_schedule_recorded(unfreeze_run):
    records = read_jsonl(unfreeze_run.run_dir / "metrics.jsonl")

    assert [record["unfrozen_blocks"] for record in records] == [1, 2]


def test_unfreeze_grows_trainable_params(unfreeze_run):
    records = read_jsonl(unfreeze_run.run_dir / "metrics.jsonl")

    assert records[0]["trainable_params"] < records[1]["trainable_params"]


def test_unfreeze_schedule_logged(unfreeze_run):
    log = (unfreeze_run.run_dir / "train.log").read_text(encoding="utf-8")

    assert "1/2" in log
    assert "2/2" in log


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_layer_decay_lrs_differ(tiny_model_dir, tmp_path, kind):
    config = tiny_config(tiny_model_dir(kind), tmp_path, tmp_path, method="full", lr=1e-3, layer_decay=0.5)
    model = load_backbone(config.model, {0: "a", 1: "b"})
    anatomy = describe_model(model)
    lrs = {group["layer"]: group["lr"] for group in full_parameter_groups(model, config)}
    top = anatomy.num_blocks + 1

    assert set(lrs) == set(range(top + 1))
    assert lrs[1] != lrs[2]
    for layer, lr in lrs.items():
        assert lr == pytest.approx(1e-3 * 0.5 ** (top - layer)), layer


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_parameter_groups_cover_model(tiny_model_dir, tmp_path, kind):
    config = tiny_config(tiny_model_dir(kind), tmp_path, tmp_path, method="full")
    model = load_backbone(config.model, {0: "a", 1: "b"})
    grouped = [name for group in full_parameter_groups(model, config) for name in group["names"]]

    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_classifier_in_top_layer(tiny_model_dir, kind):
    model = load_backbone(str(tiny_model_dir(kind)), {0: "a", 1: "b"})
    anatomy = describe_model(model)

    assert layer_id("classifier.weight", anatomy) == anatomy.num_blocks + 1


# ---------------------------------------------------------------------------
# LoRA 注入的模块


def query_value_names(model) -> list[str]:
    """模型里注意力 query 与 value 投影的短名字（随 transformers 版本不同）。"""
    names = linear_module_names(model, describe_model(model))
    for pair in (["query", "value"], ["q_proj", "v_proj"]):
        if all(name in names for name in pair):
            return pair
    raise AssertionError(f"no query/value projection among {names}")


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_lora_targets_auto(tiny_model_dir, tmp_path, kind):
    config = tiny_config(tiny_model_dir(kind), tmp_path, tmp_path)
    model = load_backbone(config.model, {0: "a", 1: "b"})
    expected = query_value_names(model)
    peft_model = prepare_lora(model, config)
    injected = {name.split(".")[-2] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}

    assert set(peft_model.peft_config["default"].target_modules) == set(expected)
    assert injected == set(expected)


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_lora_targets_invalid_lists_valid_names(tiny_model_dir, tmp_path, kind):
    config = tiny_config(tiny_model_dir(kind), tmp_path, tmp_path, lora_target_modules=["nonexistent"])
    model = load_backbone(config.model, {0: "a", 1: "b"})
    valid = linear_module_names(model, describe_model(model))

    with pytest.raises(ConfigError) as excinfo:
        prepare_lora(model, config)
    message = str(excinfo.value)

    assert "nonexistent" in message
    for name in valid:
        assert name in message, name


def test_lora_targets_invalid_rejected_by_train(tiny_model_dir, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    config = tiny_config(tiny_model_dir("vit"), data, tmp_path / "runs", lora_target_modules=["nonexistent"])

    with pytest.raises(ConfigError) as excinfo:
        train_module.train(config)

    assert "nonexistent" in str(excinfo.value)


def test_lora_targets_invalid_no_run_folder(tiny_model_dir, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    output = tmp_path / "runs"
    config = tiny_config(tiny_model_dir("vit"), data, output, lora_target_modules=["nonexistent"])

    with pytest.raises(ConfigError):
        train_module.train(config)

    assert run_folders(output) == []


def test_missing_model_no_run_folder(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    output = tmp_path / "runs"
    config = tiny_config(tmp_path / "no-such-model", data, output)

    with pytest.raises(ModelLoadError):
        train_module.train(config)

    assert run_folders(output) == []


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_other_image_size_trains(tiny_model_dir, tmp_path, kind):
    # ViT 默认只接受预训练时的输入尺寸，要靠位置编码插值，而 DINOv2 总是插值
    data = make_image_folder(tmp_path / "data", per_class=8)
    config = tiny_config(tiny_model_dir(kind), data, tmp_path / "runs", image_size=TINY_IMAGE_SIZE + 8)

    result = train_module.train(config)

    assert result.results["image_size"] == TINY_IMAGE_SIZE + 8


# ---------------------------------------------------------------------------
# 评估与预测：只用运行文件夹


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """一张单独的图和一个含两张图的文件夹，供预测用。"""
    root = tmp_path_factory.mktemp("photos")
    single = root / "single.jpg"
    make_image((220, 40, 40), seed=7).save(single)
    folder = root / "folder"
    folder.mkdir()
    make_image((40, 200, 60), seed=8).save(folder / "a.png")
    make_image((50, 70, 230), seed=9).save(folder / "b.jpg")
    return single, folder


@pytest.mark.parametrize("method", METHODS)
def test_cli_evaluate_from_run_folder(trained, capsys, method):
    run_dir = trained(method, "dinov2")["result"].run_dir
    results = read_json(run_dir / "results.json")

    code = main(["evaluate", str(run_dir)])
    metrics = read_json(run_dir / "evaluation" / "test" / "metrics.json")

    assert code == 0
    assert metrics["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-5)


def test_cli_predict_missing_input_exit_2(trained, tmp_path, capsys):
    run_dir = trained("lora", "dinov2")["result"].run_dir

    code = main(["predict", str(run_dir), str(tmp_path / "nope.jpg")])

    assert code == 2
    assert "nope.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("method", METHODS)
def test_cli_predict_from_run_folder(trained, photos, capsys, method):
    run_dir = trained(method, "vit")["result"].run_dir
    single, folder = photos

    code = main(["predict", str(run_dir), str(single), str(folder), "--top_k", "2"])
    output = capsys.readouterr().out

    assert code == 0
    assert (run_dir / "predictions" / "predictions.png").is_file()
    for name in ("single.jpg", "a.png", "b.jpg"):
        assert name in output, name


@pytest.mark.parametrize("top_k", [1, 2, 3, 10])
def test_predict_top_k_sorted(trained, photos, top_k):
    run_dir = trained("lora", "dinov2")["result"].run_dir
    single, folder = photos

    predictions = predict(run_dir, [single, folder], top_k=top_k, device="cpu")

    assert len(predictions) == 3
    for item in predictions:
        probabilities = [probability for _, _, probability in item.top_k]
        assert len(probabilities) == min(top_k, 3)
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        # 概率在返回前四舍五入到 4 位小数，所以和最多比 1 多出每项 0.00005
        assert sum(probabilities) <= 1.0 + 5e-5 * len(probabilities)


def test_predict_names_folder_truth(trained, tmp_path):
    run_dir = trained("lora", "dinov2")["result"].run_dir
    classes = read_json(run_dir / "labels.json")["folders"]
    folder = tmp_path / classes[0]
    folder.mkdir()
    make_image((220, 40, 40), seed=3).save(folder / "x.jpg")

    (item,) = predict(run_dir, folder, device="cpu")

    assert item.true_label == classes[0]


def test_cli_predict_json_parses(trained, photos, capsys):
    run_dir = trained("lora", "dinov2")["result"].run_dir
    single, _ = photos

    code = main(["predict", str(run_dir), str(single), "--json"])
    output = capsys.readouterr().out

    assert code == 0
    assert json.loads(output)[0]["path"].endswith("single.jpg")


def test_predictor_uses_run_precision(trained, monkeypatch):
    # 让 CPU 看起来支持 BF16，这时 auto 会选 BF16，而这次运行的配置是 mixed_precision: no
    monkeypatch.setattr(visionft.runtime, "cpu_supports_bf16", lambda: True)
    run_dir = trained("lora", "dinov2")["result"].run_dir

    predictor = Predictor(run_dir, device="cpu")

    assert predictor.dtype is None


# ---------------------------------------------------------------------------
# 同名运行与可复现性


@pytest.fixture(scope="module")
def twin_runs(tiny_model_dir, tmp_path_factory):
    """同一配置（同一个 run_name 和种子）训练两次。"""
    root = tmp_path_factory.mktemp("twins")
    data = make_image_folder(root / "data", per_class=8)
    config = tiny_config(tiny_model_dir("dinov2"), data, root / "runs", num_epochs=2, run_name="same")
    first = train_module.train(config)
    first_results = (first.run_dir / "results.json").read_bytes()
    second = train_module.train(config)
    return first, second, first_results


def test_same_run_name_gets_suffix(twin_runs):
    first, second, _ = twin_runs

    assert first.run_dir.name == "same"
    assert second.run_dir.name == "same-2"


def test_same_run_name_keeps_first(twin_runs):
    first, _, first_results = twin_runs

    assert (first.run_dir / "results.json").read_bytes() == first_results


def test_same_seed_same_metrics(twin_runs):
    first, second, _ = twin_runs
    first_records = read_jsonl(first.run_dir / "metrics.jsonl")
    second_records = read_jsonl(second.run_dir / "metrics.jsonl")

    assert len(first_records) == len(second_records)
    for a, b in zip(first_records, second_records):
        for key in a.keys() - TIMING_KEYS:
            assert a[key] == b[key], key


def test_same_seed_same_split(twin_runs):
    first, second, _ = twin_runs

    assert read_json(first.run_dir / "split.json") == read_json(second.run_dir / "split.json")


def test_labels_json_names_classes(twin_runs):
    first, _, _ = twin_runs
    labels = read_json(first.run_dir / "labels.json")

    assert labels["folders"] == ["cat_a", "cat_b", "cat_c"]
    assert class_display_names(labels["folders"], "en") == ["Cat A", "Cat B", "Cat C"]


# ---------------------------------------------------------------------------
# 中断与恢复


@pytest.fixture(scope="module")
def resumed_run(tiny_model_dir, tmp_path_factory):
    """与 twin_runs 同样的配置，在第 2 个 epoch 开始时按 Ctrl-C 中断，再用 resume 接着训练。"""
    root = tmp_path_factory.mktemp("resume")
    data = make_image_folder(root / "data", per_class=8)
    config = tiny_config(tiny_model_dir("dinov2"), data, root / "runs", num_epochs=2, run_name="cut")
    original = train_module._train_one_epoch
    signature = inspect.signature(original)

    def interrupt_second_epoch(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments["epoch"] == 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "_train_one_epoch", interrupt_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(config)
    return train_module.train(resume=root / "runs" / "cut")


def test_resume_completes(resumed_run):
    records = read_jsonl(resumed_run.run_dir / "metrics.jsonl")

    assert [record["epoch"] for record in records] == [1, 2]
    assert resumed_run.results["resumed_times"] == 1


def test_resume_matches_uninterrupted(resumed_run, twin_runs):
    first, _, _ = twin_runs
    uninterrupted = read_jsonl(first.run_dir / "metrics.jsonl")
    resumed = read_jsonl(resumed_run.run_dir / "metrics.jsonl")

    for a, b in zip(uninterrupted, resumed):
        for key in a.keys() - TIMING_KEYS:
            assert a[key] == b[key], key
