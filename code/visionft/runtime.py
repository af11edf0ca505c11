"""运行环境：选择设备、混合精度、随机种子、峰值内存测量、日志、进度条。"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger("visionft")


def setup_logging() -> None:
    """visionft 的日志写到 stdout，只输出消息本身：在终端和 notebook 里都清爽。"""
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def log_to_file(path):
    """训练期间把日志同时写进运行文件夹里的 train.log（追加，恢复训练时接着写）。"""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    """当前全部随机数状态，全部是张量、整数和列表，能用 torch.load(weights_only=True) 安全读回。"""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("配置要求 device=cuda，但 PyTorch 看不到 CUDA GPU。请改用 --device auto 或 --device cpu。")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("配置要求 device=mps，但这台机器没有可用的 Apple MPS。请改用 --device auto 或 --device cpu。")
    return torch.device(requested)


def cpu_supports_bf16() -> bool:
    """CPU 是否有原生 BF16 指令（AVX512-BF16 或 AMX）；没有时 BF16 autocast 反而更慢。"""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """返回 autocast 用的 dtype（None 表示 FP32）。设备不支持所要求的精度时回退并说明原因。"""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested in ("auto", "bf16"):
            if bf16_ok:
                return torch.bfloat16
            if requested == "bf16":
                logger.warning("这块 GPU 不支持 BF16，混合精度改用 FP16。")
            return torch.float16
        return torch.float16 if requested == "fp16" else None
    if device.type == "cpu":
        if requested == "auto":
            return torch.bfloat16 if cpu_supports_bf16() else None
        if requested == "bf16":
            if cpu_supports_bf16():
                return torch.bfloat16
            logger.warning("这颗 CPU 没有原生 BF16 指令，BF16 混合精度会更慢，已回退到 FP32。")
            return None
        if requested == "fp16":
            logger.warning("CPU 上不支持 FP16 混合精度训练，已回退到 FP32（可以试试 --mixed_precision bf16）。")
        return None
    # MPS
    if requested in ("bf16", "fp16"):
        logger.warning("MPS 设备上的混合精度训练还不稳定，已回退到 FP32。")
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS（{platform.machine()}）"
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    processor = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {processor}，{torch.get_num_threads()} 线程"


class PeakMemory:
    """训练期间的峰值内存（MB）：GPU 上是 torch 的峰值分配量，CPU 上是进程常驻内存（RSS）的峰值。

    CPU 上由后台线程每 0.05 秒采样一次 RSS，所以极短的尖峰可能漏掉，结果是略低的估计。
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            process = psutil.Process(os.getpid())

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                    self._stop.wait(0.05)

            self.peak_bytes = process.memory_info().rss
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.update()

    def update(self) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))

    @property
    def peak_mb(self) -> float:
        self.update()
        return round(self.peak_bytes / 2**20, 1)

    @property
    def kind(self) -> str:
        return "GPU 峰值分配（torch.cuda.max_memory_allocated）" if self.device.type == "cuda" else "进程常驻内存 RSS 峰值"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """每个 epoch 一条进度条。

    - 终端（stdout 是 tty）：tqdm 进度条；
    - notebook：一行纯文本，原地刷新（IPython display handle），执行后保存下来的只有最终那一行；
    - 其他情况（重定向到文件、子进程）：不画进度条，只留每个 epoch 的汇总行。
    """

    def __init__(self, total: int, description: str, mode: str = "auto", start: int = 0):
        if mode == "auto":
            if _in_notebook():
                mode = "notebook"
            elif sys.stdout.isatty():
                mode = "bar"
            else:
                mode = "none"
        self.mode = mode
        self.total = total
        self.count = start
        self.description = description
        self.postfix = ""
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._bar = None
        self._handle = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=description, file=sys.stdout, leave=True, dynamic_ncols=True)
        elif mode == "notebook":
            from IPython.display import Pretty, display

            self._pretty = Pretty
            self._handle = display(Pretty(self._text()), display_id=True)

    def _text(self) -> str:
        width = 30
        done = int(width * self.count / max(self.total, 1))
        elapsed = time.perf_counter() - self.started
        return f"{self.description} |{'█' * done}{'·' * (width - done)}| {self.count}/{self.total} [{elapsed:.0f}s] {self.postfix}"

    def update(self, steps: int = 1, **postfix) -> None:
        self.count += steps
        self.postfix = " ".join(f"{key}={value}" for key, value in postfix.items())
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
        elif self._handle is not None:
            now = time.perf_counter()
            if now - self._last_draw > 0.5 or self.count >= self.total:
                self._last_draw = now
                self._handle.update(self._pretty(self._text()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._handle is not None:
            self._handle.update(self._pretty(self._text()))
