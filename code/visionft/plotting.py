"""画图的公共设置：让 matplotlib 显示中文而不出现方框，原子地保存图片。"""

from __future__ import annotations

import io
import logging
from pathlib import Path

logger = logging.getLogger("visionft")

# 依次尝试的中文字体：mplfonts 随包带的 Noto Sans CJK，再是各系统常见的中文字体
SYSTEM_CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Microsoft YaHei",
                    "SimHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")
_font_name: str | None = None


def setup_chinese_font() -> str | None:
    """注册一个能显示中文的字体并设为默认，返回字体名；找不到时警告并返回 None。"""
    global _font_name
    if _font_name is not None:
        return _font_name
    import matplotlib
    from matplotlib import font_manager

    try:
        import mplfonts

        font_file = Path(mplfonts.__file__).parent / "fonts" / "NotoSansCJKsc-Regular.otf"
        if font_file.is_file():
            font_manager.fontManager.addfont(str(font_file))
    except ImportError:
        pass
    available = {font.name for font in font_manager.fontManager.ttflist}
    for name in SYSTEM_CJK_FONTS:
        if name in available:
            _font_name = name
            break
    if _font_name is None:
        logger.warning("没有找到中文字体，图中的中文可能显示成方框：pip install mplfonts，或把 label_language 设为 en。")
        return None
    matplotlib.rcParams["font.sans-serif"] = [_font_name, "DejaVu Sans"]
    matplotlib.rcParams["font.family"] = "sans-serif"
    matplotlib.rcParams["axes.unicode_minus"] = False
    return _font_name


def save_figure(figure, path: Path, dpi: int = 110) -> None:
    from .io import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())
