"""visionft：课程配套的视觉模型微调包（LoRA 与全量微调、评估、预测）。

    from visionft import load_config, train, evaluate, predict
    config = load_config("code/configs/lora_quick.yaml", {"num_epochs": 1})
    result = train(config)
"""

import warnings

# tqdm.auto 在没有装 ipywidgets 的 notebook 里会警告；visionft 自己画进度条，用不到它
warnings.filterwarnings("ignore", message="IProgress not found")

from .config import ConfigError, TrainConfig, load_config
from .evaluate import evaluate
from .predict import Predictor, plot_predictions, predict
from .train import TrainResult, train

__all__ = ["ConfigError", "Predictor", "TrainConfig", "TrainResult", "evaluate", "load_config", "plot_predictions",
           "predict", "train"]
__version__ = "0.1.0"
