"""visionft：课程配套的视觉模型微调包（LoRA 与全量微调、评估、预测）。

    from visionft import load_config, train, evaluate, predict
    config = load_config("code/configs/lora_quick.yaml", {"num_epochs": 1})
    result = train(config)
"""

import warnings

# tqdm.auto 在没有装 ipywidgets 的 notebook 里会警告；visionft 自己画进度条，用不到它
warnings.filterwarnings("ignore", message="IProgress not found")

# NOTE: 这里直接导入 torch 与 transformers，所以连 `python -m visionft --help` 也要几秒。
# 改成按需导入会让 `visionft.train` 有时是函数、有时是同名子模块，更容易用错，所以保持直接导入。
from .config import ConfigError, TrainConfig, load_config  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .predict import Predictor, plot_predictions, predict  # noqa: E402
from .train import TrainResult, train  # noqa: E402

__all__ = ["ConfigError", "Predictor", "TrainConfig", "TrainResult", "evaluate", "load_config", "plot_predictions",
           "predict", "train"]
__version__ = "0.1.0"
