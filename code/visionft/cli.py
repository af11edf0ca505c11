"""命令行入口：python -m visionft train | evaluate | predict。这里只解析参数，工作交给各模块的函数。"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, field_help, field_names, load_config, parse_cli_value, _unknown_key_message

EXAMPLES = """示例：
  python -m visionft train --config code/configs/lora_quick.yaml --data_dir data/stanford-dogs-10
  python -m visionft train --config code/configs/full_quick.yaml --num_epochs 2 --lr 1e-4
  python -m visionft train --resume runs/lora-quick-20261204-101500
  python -m visionft evaluate runs/lora-quick-20261204-101500
  python -m visionft predict runs/lora-quick-20261204-101500 my_dog.jpg photos/ --top_k 3
"""


class ChineseHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):
        return super().add_usage(usage, actions, groups, prefix="用法：" if prefix is None else prefix)


class ChineseArgumentParser(argparse.ArgumentParser):
    """帮助和错误信息用中文的 ArgumentParser。"""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", ChineseHelpFormatter)
        kwargs["add_help"] = False
        kwargs["allow_abbrev"] = False  # --num_epoch 不能悄悄变成 --num_epochs
        super().__init__(*args, **kwargs)
        self._positionals.title = "位置参数"
        self._optionals.title = "选项"
        self.add_argument("-h", "--help", action="help", help="显示帮助并退出")

    def error(self, message: str):
        translations = {
            "the following arguments are required": "缺少必需的参数",
            "unrecognized arguments": "无法识别的参数",
            "invalid choice": "无效的选项",
            "expected one argument": "需要一个值",
            "argument": "参数",
        }
        for english, chinese in translations.items():
            message = message.replace(english, chinese)
        self.print_usage(sys.stderr)
        self.exit(2, f"错误：{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ChineseArgumentParser(prog="python -m visionft", description="用 LoRA 或全量微调训练狗品种分类器，并评估和预测。",
                                   epilog=EXAMPLES)
    commands = parser.add_subparsers(dest="command", title="子命令", metavar="{train,evaluate,predict}",
                                     parser_class=ChineseArgumentParser)
    commands.required = True

    train = commands.add_parser("train", help="训练（LoRA 或全量微调）", description="训练一个模型，结果写进新的运行文件夹。")
    train.add_argument("--config", help="YAML 配置文件，例如 code/configs/lora_quick.yaml")
    train.add_argument("--resume", metavar="RUN_DIR", help="从运行文件夹里最近一次完整的检查点继续训练")
    overrides = train.add_argument_group("配置项（覆盖 YAML 里的同名键；值按 YAML 语法解析，例如 1e-4、true、[4, 8, 12]、null）")
    for name in field_names():
        overrides.add_argument(f"--{name}", metavar="VALUE", help=field_help(name) or None)

    evaluate = commands.add_parser("evaluate", help="用最佳检查点评估", description="评估运行文件夹里的最佳检查点，写出报告和混淆矩阵。")
    evaluate.add_argument("run_dir", help="训练生成的运行文件夹")
    evaluate.add_argument("--data_dir", help="要评估的 ImageFolder 文件夹；不给时用训练时保存的测试集")
    evaluate.add_argument("--split", default="test", choices=("val", "test"), help="不给 --data_dir 时评估哪个子集（默认 test）")
    evaluate.add_argument("--model", help="LoRA 运行的骨干网络（Hub id 或本地文件夹）；默认用训练时记录的")
    evaluate.add_argument("--batch_size", type=int, help="评估的 batch size；默认用训练时的")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help="设备（默认 auto）")

    predict = commands.add_parser("predict", help="预测图像的品种", description="对图像或文件夹做预测，打印 top-k 品种并保存结果图。")
    predict.add_argument("run_dir", help="训练生成的运行文件夹")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="图像文件或文件夹（递归查找图像）")
    predict.add_argument("--top_k", type=int, default=3, help="每张图显示概率最高的几个品种（默认 3）")
    predict.add_argument("--output", help="结果图的保存路径（PNG）；默认 <run_dir>/predictions/predictions.png")
    predict.add_argument("--json", action="store_true", help="以 JSON 打印结果")
    predict.add_argument("--model", help="LoRA 运行的骨干网络（Hub id 或本地文件夹）；默认用训练时记录的")
    predict.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help="设备（默认 auto）")
    return parser


def _run_train(args: argparse.Namespace, leftovers: list[str]) -> int:
    from .train import train

    if leftovers:
        key = leftovers[0].lstrip("-").split("=")[0]
        raise ConfigError(_unknown_key_message(key))
    overrides = {name: parse_cli_value(name, getattr(args, name)) for name in field_names() if getattr(args, name) is not None}
    if args.resume:
        if args.config or overrides:
            raise ConfigError("--resume 沿用运行文件夹里保存的配置，不能再同时给 --config 或其他配置项。")
        result = train(resume=args.resume)
    else:
        if not args.config:
            raise ConfigError("请用 --config 指定配置文件（例如 code/configs/lora_quick.yaml），或用 --resume 继续一次训练。")
        result = train(load_config(args.config, overrides))
    print(json.dumps({key: result.results[key] for key in ("test_accuracy", "test_macro_f1", "train_seconds", "peak_memory_mb")},
                     ensure_ascii=False))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    metrics = evaluate(args.run_dir, data_dir=args.data_dir, split=args.split, model=args.model,
                       batch_size=args.batch_size, device=args.device)
    print(metrics["report_text"])
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import display_path
    from .predict import Predictor, collect_images, format_predictions, plot_predictions

    if args.json:
        # stdout 只留 JSON，日志改写到 stderr，方便其他程序解析
        for handler in logging.getLogger("visionft").handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setStream(sys.stderr)
    if args.top_k < 1:
        raise ConfigError(f"--top_k 应当是正整数，收到 {args.top_k}。")
    images = collect_images(args.inputs)  # 先检查输入，再花几秒加载模型
    if not images:
        from .data import IMAGE_EXTENSIONS

        print(f"错误：给出的路径里没有图像文件（支持的扩展名：{'、'.join(sorted(IMAGE_EXTENSIONS))}）。", file=sys.stderr)
        return 2
    predictor = Predictor(args.run_dir, model=args.model, device=args.device)
    predictions = predictor.predict(images, top_k=args.top_k)
    if not predictions:
        print("错误：所有图像都无法读取，见上面的警告。", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"path": display_path(p.path), "top_k": [{"label": f, "name": n, "probability": prob} for f, n, prob in p.top_k],
                           "true_label": p.true_label} for p in predictions], ensure_ascii=False, indent=2))
    else:
        print(format_predictions(predictions))
    output = Path(args.output) if args.output else Path(args.run_dir) / "predictions" / "predictions.png"
    figure = plot_predictions(predictions[:32], output, language=predictor.language)
    plt.close(figure)
    print(f"结果图已保存：{display_path(output)}" + ("（只画了前 32 张）" if len(predictions) > 32 else ""),
          file=sys.stderr if args.json else sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, leftovers = parser.parse_known_args(argv)
    if leftovers and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(leftovers)}")

    # 解析完参数再导入 torch 等重的依赖：--help 和参数错误可以立刻返回
    from .data import DataError
    from .model import ModelLoadError
    from .runtime import setup_logging
    from .train import TrainingError

    setup_logging()
    try:
        if args.command == "train":
            return _run_train(args, leftovers)
        if args.command == "evaluate":
            return _run_evaluate(args)
        return _run_predict(args)
    except KeyboardInterrupt:
        print("已中断。", file=sys.stderr)
        return 130
    except (ConfigError, DataError, ModelLoadError, FileNotFoundError) as error:
        print(f"错误：{error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"错误：{error}", file=sys.stderr)
        return 1
