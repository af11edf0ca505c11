"""visionft.config 与 `python -m visionft train` 的配置检查：YAML、命令行覆盖、类型与取值范围。"""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import CONFIGS_DIR, make_image_folder, run_folders, tiny_config

from visionft.cli import main
from visionft.config import ConfigError, TrainConfig, load_config, parse_cli_value
from visionft.data import DataError
from visionft.train import train

SHIPPED_CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))


def write_yaml(path, values: dict):
    path.write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
    return path


def mentions_key(message: str, key: str) -> bool:
    """消息里是否把 key 作为一个完整的词写出（`lr` 不能只是 `lr_decay` 的一部分）。"""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", message) is not None


def test_shipped_configs_exist():
    assert len(SHIPPED_CONFIGS) >= 4


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = load_config(path)

    assert isinstance(config, TrainConfig)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_values_kept(path):
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    config = load_config(path)

    for key, value in values.items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_starts_with_command(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    command = f"python -m visionft train --config code/configs/{path.name}"

    assert lines[0].startswith("#")
    assert any(command in line for line in header)
    assert any(command in line and " --" in line.split(command, 1)[1] for line in header), "no override example"


def test_yaml_unknown_key_rejected(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"method": "lora", "learning_rate": 0.1})

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert mentions_key(str(excinfo.value), "learning_rate")


def test_unknown_key_suggests_close_name(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"num_epoch": 2})

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert mentions_key(str(excinfo.value), "num_epochs")


def test_cli_yaml_unknown_key_exit_2(tmp_path, capsys):
    path = write_yaml(tmp_path / "bad.yaml", {"method": "lora", "learning_rate": 0.1})

    code = main(["train", "--config", str(path)])
    stderr = capsys.readouterr().err

    assert code == 2
    assert mentions_key(stderr, "learning_rate")


@pytest.mark.parametrize("argument", ["--learning_rate", "--learning_rate=0.1"])
def test_cli_unknown_override_exit_2(tmp_path, capsys, argument):
    path = write_yaml(tmp_path / "ok.yaml", {"method": "lora", "data_dir": str(tmp_path / "missing")})
    extra = [argument, "0.1"] if "=" not in argument else [argument]

    code = main(["train", "--config", str(path), *extra])
    stderr = capsys.readouterr().err

    assert code == 2
    assert mentions_key(stderr, "learning_rate")


def test_cli_abbreviated_key_rejected(tmp_path, capsys):
    # data_dir 不存在：如果缩写被悄悄接受，运行会停在找不到数据文件夹，而不是报未知的配置项
    path = write_yaml(tmp_path / "ok.yaml", {"method": "lora", "data_dir": str(tmp_path / "missing")})

    code = main(["train", "--config", str(path), "--num_epoch", "2"])
    stderr = capsys.readouterr().err

    assert code == 2
    assert mentions_key(stderr, "num_epoch")


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", "fast"), ("num_epochs", 2.5), ("gradient_checkpointing", "maybe"), ("batch_size", True),
     ("unfreeze_schedule", [4, "eight"]), ("lora_target_modules", 7)],
)
def test_yaml_wrong_type_rejected(tmp_path, key, value):
    path = write_yaml(tmp_path / "bad.yaml", {key: value})

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert mentions_key(str(excinfo.value), key)


@pytest.mark.parametrize(("key", "text"), [("num_epochs", "2.5"), ("lr", "fast"), ("gradient_checkpointing", "maybe")])
def test_cli_wrong_type_exit_2(tmp_path, capsys, key, text):
    path = write_yaml(tmp_path / "ok.yaml", {"method": "lora"})

    code = main(["train", "--config", str(path), f"--{key}", text])
    stderr = capsys.readouterr().err

    assert code == 2
    assert mentions_key(stderr, key)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("lora_r", 0, "[1, 1024]"), ("lr", -1.0, "(0.0, 1.0]"), ("batch_size", 0, "[1, 4096]"),
     ("val_fraction", 0.9, "(0.0, 0.5]"), ("image_size", 8, "[14, 1024]")],
)
def test_impossible_value_names_range(key, value, allowed):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, {key: value})
    message = str(excinfo.value)

    assert mentions_key(message, key)
    assert allowed in message


@pytest.mark.parametrize(
    ("values", "key"),
    [({"method": "qlora"}, "method"), ({"unfreeze_schedule": [8, 4]}, "unfreeze_schedule"),
     ({"unfreeze_schedule": [0]}, "unfreeze_schedule"), ({"lora_target_modules": []}, "lora_target_modules"),
     ({"lora_target_modules": "query"}, "lora_target_modules")],
)
def test_invalid_choice_rejected(values, key):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, values)

    assert mentions_key(str(excinfo.value), key)


def test_yaml_error_names_file(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"lora_r": 0})

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert "bad.yaml" in str(excinfo.value)


def test_missing_config_file_rejected(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path / "nope.yaml")

    assert "nope.yaml" in str(excinfo.value)


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [("lr", "1e-4", 1e-4), ("lr", "0.001", 0.001), ("gradient_checkpointing", "true", True),
     ("gradient_checkpointing", "false", False), ("unfreeze_schedule", "[4, 8]", [4, 8]),
     ("unfreeze_schedule", "null", None), ("run_name", "null", None), ("run_name", "123", "123"),
     ("max_train_images", "null", None), ("lora_target_modules", "[query, value]", ["query", "value"])],
)
def test_cli_value_parsed(key, text, expected):
    assert parse_cli_value(key, text) == expected


def test_yaml_exponent_without_dot(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("lr: 1e-4\n", encoding="utf-8")

    try:
        config = load_config(path)
    except ConfigError as error:
        # 也可以接受的修法：拒绝，但告诉学习者写成 1.0e-4
        assert "1.0e-4" in str(error)
    else:
        assert config.lr == 1e-4


def test_cli_help_lists_every_key(capsys):
    from visionft.config import field_names

    with pytest.raises(SystemExit) as excinfo:
        main(["train", "--help"])
    output = capsys.readouterr().out

    assert excinfo.value.code == 0
    for name in field_names():
        assert f"--{name}" in output, name


def test_cli_value_int_not_float():
    with pytest.raises(ConfigError):
        parse_cli_value("num_epochs", "1e2")


def test_cli_overrides_reach_run_config(tmp_path, tiny_model_dir, capsys):
    data = make_image_folder(tmp_path / "data", per_class=8)
    base = {"method": "full", "model": str(tiny_model_dir("dinov2")), "data_dir": str(data), "split_dir": None,
            "output_dir": str(tmp_path / "runs"), "image_size": 16, "batch_size": 4, "num_epochs": 2,
            "val_fraction": 0.25, "test_fraction": 0.25,
            "progress": "none", "mixed_precision": "no", "device": "cpu", "run_name": "cli"}
    path = write_yaml(tmp_path / "tiny.yaml", base)

    code = main(["train", "--config", str(path), "--lr", "1e-4", "--gradient_checkpointing", "true",
                 "--unfreeze_schedule", "[1, 2]", "--max_train_images", "null"])
    saved = yaml.safe_load((tmp_path / "runs" / "cli" / "config.yaml").read_text(encoding="utf-8"))

    assert code == 0
    assert saved["lr"] == 1e-4
    assert saved["gradient_checkpointing"] is True
    assert saved["unfreeze_schedule"] == [1, 2]
    assert saved["max_train_images"] is None


def test_batch_size_above_train_set_rejected(tmp_path, tiny_model_dir):
    data = make_image_folder(tmp_path / "data", per_class=4)
    output = tmp_path / "runs"
    config = tiny_config(tiny_model_dir("dinov2"), data, output, batch_size=64)

    with pytest.raises(ConfigError) as excinfo:
        train(config)

    assert mentions_key(str(excinfo.value), "batch_size")
    assert run_folders(output) == []


def test_max_train_images_below_classes(tmp_path, tiny_model_dir):
    data = make_image_folder(tmp_path / "data", per_class=8)
    config = tiny_config(tiny_model_dir("dinov2"), data, tmp_path / "runs", max_train_images=2, batch_size=1)

    with pytest.raises((ConfigError, DataError)) as excinfo:
        train(config)

    assert mentions_key(str(excinfo.value), "max_train_images")
