"""生成并执行课程 notebook：scripts/notebooks/*.md（MyST 格式）→ book/**/*.ipynb（带输出）。

    python scripts/build_notebooks.py            # 重新训练并执行全部 notebook（2 核 CPU 上实测约 7.5 分钟）
    python scripts/build_notebooks.py lora       # 只执行一个
    python scripts/build_notebooks.py --no-execute   # 只转换格式，不执行（输出为空）

执行前会删除这些 notebook 自己生成的运行文件夹（runs/lora-quick 等），保证输出来自这一次运行。
执行后把输出里本机的绝对路径和用户名替换掉，再写进 book/；网站构建时不再执行（_config.yml 里
execute_notebooks: off），所以新克隆的仓库不需要训练就能构建网站。
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "scripts" / "notebooks"

# 名字 → (目标 notebook, 它生成的运行文件夹)。顺序就是执行顺序：对比页读取前两个的结果。
NOTEBOOKS = {
    "lora": (ROOT / "book" / "tutorials" / "lora.ipynb", ["runs/lora-quick", "runs/lora-cli-demo"]),
    "full_finetuning": (ROOT / "book" / "tutorials" / "full_finetuning.ipynb", ["runs/full-quick"]),
    "comparison": (ROOT / "book" / "comparison.ipynb", []),
}


def private_strings() -> list[tuple[str, str]]:
    """需要从输出里抹掉的字符串及其替换：仓库的绝对路径、它的上级、家目录、用户名。"""
    replacements = [(str(ROOT) + os.sep, ""), (str(ROOT), "."), (str(ROOT.parent) + os.sep, "../"),
                    (str(Path.home()), "~")]
    user = getpass.getuser()
    if len(user) >= 3:
        replacements.append((user, "user"))
    return replacements


def scrub(text: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    # 其他绝对路径里的 site-packages 位置（例如警告信息里的）只留下包内的相对部分
    return re.sub(r"(?:/[^\s/'\"]+)+/site-packages/", "<site-packages>/", text)


def apply_carriage_returns(text: str) -> str:
    """像终端一样处理回车：每行只留最后一个 \r 之后的内容（进度条的最终状态）。"""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def coalesce_streams(outputs: list) -> list:
    """把相邻的同名 stream 输出合并成一个，再处理回车；网页上就是一整块日志，而不是几十个小块。"""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            previous["text"] += output["text"]
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = apply_carriage_returns(output["text"])
    return merged


def scrub_outputs(notebook: nbformat.NotebookNode) -> None:
    replacements = private_strings()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell["outputs"] = coalesce_streams(cell.get("outputs", []))
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = scrub(output["text"], replacements)
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = scrub(value, replacements)
            if "traceback" in output:
                output["traceback"] = [scrub(line, replacements) for line in output["traceback"]]
        cell.get("metadata", {}).pop("execution", None)


def build(name: str, execute: bool, timeout: int) -> float:
    target, run_dirs = NOTEBOOKS[name]
    notebook = jupytext.read(SOURCES / f"{name}.md")
    notebook.metadata.pop("jupytext", None)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    started = time.perf_counter()
    if execute:
        for run_dir in run_dirs:
            shutil.rmtree(ROOT / run_dir, ignore_errors=True)
        env_before = dict(os.environ)
        # 不向 Hugging Face 发送使用统计
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        try:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(target.parent)}}).execute()
        finally:
            os.environ.clear()
            os.environ.update(env_before)
        scrub_outputs(notebook)
    seconds = time.perf_counter() - started
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    print(f"{name}: 写入 {target.relative_to(ROOT)}（{'执行用时 %.0f 秒' % seconds if execute else '未执行'}）", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="把 scripts/notebooks/*.md 转成 notebook 并执行，输出写进 book/。")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"要生成的 notebook：{', '.join(NOTEBOOKS)}（默认全部，按依赖顺序）")
    parser.add_argument("--no-execute", action="store_true", help="只转换格式，不执行")
    parser.add_argument("--timeout", type=int, default=1800, help="单个代码单元的最长执行时间（秒，默认 1800）")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in NOTEBOOKS]
    if unknown:
        parser.error(f"未知的 notebook：{', '.join(unknown)}；可选：{', '.join(NOTEBOOKS)}")
    names = args.names or list(NOTEBOOKS)
    total = sum(build(name, not args.no_execute, args.timeout) for name in NOTEBOOKS if name in names)
    print(f"共用时 {total:.0f} 秒")
    return 0


if __name__ == "__main__":
    sys.exit(main())
