"""文件读写：原子写入、运行文件夹、JSON 与 JSON Lines。

原子写入的做法：先写到同一文件夹里的临时文件，flush 并 fsync，再用 os.replace 换上去。
进程在任何时刻被杀掉，磁盘上要么是旧文件，要么是完整的新文件，不会留下写了一半、
之后又被当真读取的文件。
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows 不能打开文件夹；那里 os.replace 本身已经足够
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp 建的临时文件只有属主可读（0600）；换上去之前改成普通文件的权限，别人也能读运行结果
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """追加一行 JSON 并 fsync。中断时最多丢最后一行，read_jsonl 会跳过不完整的行。"""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """用写好的 tmp_dir 替换 final_dir。

    两次 rename 之间若被中断，旧内容留在 `<final>.old`，load 时会被找回（见 find_checkpoint_dir）。
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old_dir = final_dir.with_name(final_dir.name + ".old")
    if old_dir.exists():
        shutil.rmtree(old_dir)
    if final_dir.exists():
        os.replace(final_dir, old_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old_dir.exists():
        shutil.rmtree(old_dir)


def find_checkpoint_dir(final_dir: Path) -> Path | None:
    """返回完整的检查点文件夹：优先 final_dir，替换被中断时退回 `<final>.old`。"""
    final_dir = Path(final_dir)
    for candidate in (final_dir, final_dir.with_name(final_dir.name + ".old")):
        if (candidate / "COMPLETE").exists():
            return candidate
    return None


def mark_complete(folder: Path) -> None:
    atomic_write_text(Path(folder) / "COMPLETE", datetime.now().isoformat(timespec="seconds") + "\n")


def create_run_dir(output_dir: str | Path, run_name: str) -> Path:
    """新建运行文件夹；同名文件夹已存在时依次加 -2、-3……，从不覆盖已有的运行。"""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for index in range(1, 10_000):
        name = run_name if index == 1 else f"{run_name}-{index}"
        candidate = output_dir / name
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"{output_dir} 里名为 {run_name} 的运行文件夹太多，请换一个 run_name。")


def display_path(path: str | Path) -> str:
    """给日志和消息用的路径：相对路径和当前目录之下的路径写成相对形式，其他绝对路径照原样。

    notebook 里的路径都是相对仓库根目录的，所以输出里不会出现本机的绝对路径与用户名；
    用户在命令行上给的绝对路径则原样显示，方便对照。
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        relative = Path(os.path.relpath(path))
    except ValueError:  # Windows 上不同盘符之间没有相对路径
        return str(path)
    return str(path) if relative.parts[:1] == ("..",) else relative.as_posix()
