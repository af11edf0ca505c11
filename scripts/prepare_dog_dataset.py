#!/usr/bin/env python3
"""准备 Stanford Dogs 数据集，输出 ImageFolder 布局（每个品种一个文件夹）。

数据来源二选一：
- 从官方地址下载 images.tar、annotation.tar、lists.tar，支持断点续传，并校验 SHA-256；
- 用 --source_dir 指向本地已有的副本：归档文件，或已解压的 Images/、Annotation/ 和 .mat 划分文件。

输出：
- OUTPUT/<品种文件夹>/<原文件名>，例如 n02099601-golden_retriever/n02099601_10.jpg；
- 官方训练/测试划分 SPLITS_DIR/train.txt 和 test.txt。每行一个 `文件夹/文件名.jpg`，按字典序排列，
  总是包含全部 120 个品种，与 --breeds 选了哪些品种无关。

Stanford Dogs 来自 ImageNet，图片只能用于非商业的研究与教学，版权归各自的作者所有，
所以不要把图片提交到仓库（仓库的 .gitignore 已忽略 data/）。

用法示例：
    python scripts/prepare_dog_dataset.py                     # 下载并准备课程默认的 10 个品种
    python scripts/prepare_dog_dataset.py --crop --size 224   # 裁剪到标注框，再缩放到 224×224
    python scripts/prepare_dog_dataset.py --source_dir ~/stanford-dogs --breeds all
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import ExifTags, Image

logger = logging.getLogger("prepare_dog_dataset")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DOWNLOAD_DIR = REPO_ROOT / "data" / "downloads"
DEFAULT_BASE_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"

ARCHIVE_NAMES = ("images.tar", "annotation.tar", "lists.tar")

# NOTE: 三个官方归档的 SHA-256 还没有核对过，所以都是 None。值为 None 时脚本打印算出的哈希并接受文件。
# 用官方文件核对后把哈希填进来，之后不一致就会报错。
KNOWN_SHA256: dict[str, str | None] = {
    "images.tar": None,
    "annotation.tar": None,
    "lists.tar": None,
}

# 课程默认的 10 个品种（文件夹名去掉 WordNet id 之后的部分）。金毛和拉布拉多是有意放进来的一对相似品种。
DEFAULT_BREEDS = (
    "golden_retriever",
    "Labrador_retriever",
    "Border_collie",
    "German_shepherd",
    "Siberian_husky",
    "pug",
    "Samoyed",
    "Pomeranian",
    "Pembroke",
    "toy_poodle",
)

SYNSET_PREFIX = re.compile(r"^n\d{8}-")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OPTIONS_FILE_NAME = ".prepare_options.json"
SPLITS_DIR_NAME = "stanford-dogs-splits"

# 与 Pillow 的 ImageOps.exif_transpose 使用的对照表相同：EXIF Orientation 值 → 转正所需的变换。
EXIF_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class PrepareError(Exception):
    """准备数据集失败。消息是给用户看的中文说明，main() 打印后以状态码 1 退出。"""


class DownloadError(PrepareError):
    """下载失败，而且重试也没有用。"""


class IncompleteDownloadError(DownloadError):
    """服务器在文件传完之前断开了连接，可以从 .part 文件续传。"""


class ChecksumError(PrepareError):
    """文件的 SHA-256 与期望值不一致。"""


class UnsafeArchiveError(PrepareError):
    """归档里有会写到目标目录之外、或者不是普通文件和目录的成员。"""


class CorruptImageError(PrepareError):
    """图片无法解码。"""


# ---------------------------------------------------------------------------
# 校验与下载
# ---------------------------------------------------------------------------


def compute_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, *, delete_on_mismatch: bool = True) -> str:
    """计算文件的 SHA-256 并与 expected 比较，返回算出的哈希。

    expected 为 None 时只打印哈希并接受文件。不一致时抛出 ChecksumError。
    delete_on_mismatch 为真（下载缓存里的文件）时先删除该文件，传 False 可保留用户自己的文件。
    """
    path = Path(path)
    actual = compute_sha256(path)
    if expected is None:
        logger.info(
            "%s 的 SHA-256：%s。没有已知的校验值，所以已接受。要核对时可加 --sha256 %s=<哈希>",
            path, actual, path.name.removesuffix(".part"),
        )
        return actual

    if actual == expected.lower():
        logger.info("%s 的 SHA-256 校验通过", path)
        return actual

    if delete_on_mismatch:
        path.unlink()
        action = "已删除该文件，请重新运行本脚本重新下载"
    else:
        action = "请换用完好的文件，或去掉对应的 --sha256 后重试"
    raise ChecksumError(f"{path} 的 SHA-256 校验失败：期望 {expected.lower()}，实际 {actual}。{action}。")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """解析 `bytes START-END/TOTAL` 或 `bytes */TOTAL`，返回 (START, TOTAL)，缺的部分为 None。"""
    if not value:
        return None, None
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if match is None:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _fetch_to_part(url: str, part: Path, *, timeout: float, chunk_size: int) -> None:
    """把 url 下载到 part，已有的 part 用 HTTP Range 续传，只在 part 完整时正常返回。

    网络错误、5xx 和数据不足（IncompleteDownloadError）原样抛出，由调用方重试。
    其他 HTTP 错误抛出 DownloadError。
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "prepare_dog_dataset (urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)

    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            _, total = _parse_content_range(err.headers.get("Content-Range"))
        if err.code == 416 and offset:
            if total == offset:
                logger.info("%s 已经下载完整（%d 字节）", part, offset)
                return
            logger.warning("服务器拒绝了从第 %d 字节续传的请求（HTTP 416），删除 %s 后从头下载", offset, part)
            part.unlink()
            return _fetch_to_part(url, part, timeout=timeout, chunk_size=chunk_size)
        if err.code >= 500:
            raise
        raise DownloadError(
            f"下载 {url} 失败：HTTP {err.code} {err.reason}。请检查 --base_url 是否正确，或稍后重试。"
        ) from err

    with response:
        if response.status == 206 and offset:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                logger.warning(
                    "服务器返回的续传范围（%s）与请求的起点 %d 不符，删除 %s 后从头下载",
                    response.headers.get("Content-Range"), offset, part,
                )
                response.close()
                part.unlink()
                return _fetch_to_part(url, part, timeout=timeout, chunk_size=chunk_size)
            mode = "ab"
            logger.info("从第 %d 字节续传 %s", offset, url)
        elif response.status == 200:
            if offset:
                logger.warning("服务器忽略了 Range 请求（返回 200），丢弃已下载的 %d 字节，从头下载 %s", offset, url)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise DownloadError(f"下载 {url} 失败：服务器返回了意外的状态码 {response.status}。")

        received = offset
        next_report = received + max((total or 0) // 10, 50 << 20)
        with open(part, mode) as file:
            while chunk := response.read(chunk_size):
                file.write(chunk)
                received += len(chunk)
                if received >= next_report:
                    progress = f"{received / total:.0%}" if total else f"{received >> 20} MiB"
                    logger.info("  %s：已下载 %s", part.name.removesuffix(".part"), progress)
                    next_report = received + max((total or 0) // 10, 50 << 20)

    size = part.stat().st_size
    if total is None:
        logger.warning("服务器没有给出 %s 的大小，无法确认下载是否完整，只能依靠 SHA-256 核对", url)
    elif size != total:
        raise IncompleteDownloadError(f"连接在传完之前断开：收到 {size} / {total} 字节")


def download_file(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    retry_delay: float = 2.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """下载 url 到 dest，支持断点续传，并在重命名为 dest 之前校验大小和 SHA-256。

    未完成的数据保存在 `dest.part`。网络错误、5xx 和传输中断最多重试 retries 次，
    每次都从 .part 续传。服务器不支持 Range（返回 200）时从头下载。
    SHA-256 不一致时删除文件并抛出 ChecksumError。dest 已存在时只做校验。
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        logger.info("%s 已存在，跳过下载", dest)
        verify_sha256(dest, expected_sha256)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists():
        logger.info("发现未完成的下载 %s（%d 字节），尝试续传", part, part.stat().st_size)
    else:
        logger.info("开始下载 %s", url)

    for attempt in range(retries + 1):
        try:
            _fetch_to_part(url, part, timeout=timeout, chunk_size=chunk_size)
            break
        except (IncompleteDownloadError, OSError, http.client.HTTPException) as err:
            # urllib.error.URLError、HTTPError（5xx）和超时都是 OSError 的子类。
            if attempt == retries:
                partial_note = f"已下载的部分保存在 {part}，" if part.exists() else ""
                raise DownloadError(
                    f"下载 {url} 失败：{err}（已重试 {retries} 次）。{partial_note}重新运行本脚本会从断点继续。"
                ) from err
            delay = retry_delay * 2**attempt
            logger.warning("下载 %s 中断：%s。%.0f 秒后重试（第 %d/%d 次）", url, err, delay, attempt + 1, retries)
            time.sleep(delay)

    verify_sha256(part, expected_sha256, delete_on_mismatch=True)
    os.replace(part, dest)
    logger.info("已保存 %s", dest)
    return dest


# ---------------------------------------------------------------------------
# 安全解压
# ---------------------------------------------------------------------------


def _reject_reason(member: tarfile.TarInfo, target: str) -> str | None:
    """返回拒绝该成员的原因，成员安全时返回 None。target 必须已经过 os.path.realpath。"""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "使用了绝对路径"
    if ".." in re.split(r"[\\/]", name):
        return "路径中含有 `..`"
    if member.issym():
        return f"是符号链接（指向 {member.linkname!r}）"
    if member.islnk():
        return f"是硬链接（指向 {member.linkname!r}）"
    if member.ischr() or member.isblk():
        return "是设备文件"
    if member.isfifo():
        return "是 FIFO（命名管道）"
    if not (member.isfile() or member.isdir()):
        return "不是普通文件或目录"

    destination = os.path.realpath(os.path.join(target, name))
    if os.path.commonpath([destination, target]) != target:
        return "会写到目标目录之外"
    return None


def safe_extract(archive: Path, target: Path) -> None:
    """把 tar 归档解压到 target。解压前先检查全部成员，有一个没通过检查就不写任何文件。

    只接受普通文件和目录。遇到绝对路径、含 `..` 的路径、符号链接、硬链接、设备文件或 FIFO 时
    抛出 UnsafeArchiveError。Python 提供 tarfile.data_filter 时（3.12 起，3.11 从 3.11.4 起），
    解压时还会用 filter="data" 再检查一遍。这一层在解压过程中才拒绝成员，
    所以被它拒绝时，排在前面的文件可能已经写出（extract_archive 会丢弃这样的半成品目录）。
    """
    archive = Path(archive)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    real_target = os.path.realpath(target)

    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                reason = _reject_reason(member, real_target)
                if reason is not None:
                    raise UnsafeArchiveError(
                        f"拒绝解压归档 {archive} 中的成员 {member.name!r}：它{reason}。"
                        "这个归档可能已损坏或被篡改，请删除后重新下载官方文件。"
                    )

            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=members, filter="data")
            else:
                tar.extractall(target, members=members)
    except tarfile.FilterError as err:
        raise UnsafeArchiveError(
            f"拒绝解压归档 {archive} 中的成员 {err.tarinfo.name!r}：{err}。"
            "这个归档可能已损坏或被篡改，请删除后重新下载官方文件。"
        ) from err
    except tarfile.TarError as err:
        raise PrepareError(f"无法读取归档 {archive}：{err}。文件可能已损坏，请删除后重新下载。") from err


def extract_archive(archive: Path, extract_dir: Path) -> Path:
    """把 archive 解压到 extract_dir 并返回 extract_dir。extract_dir 已存在时跳过解压。

    先解压到同级的 `.partial` 目录，全部成功后再重命名，所以 extract_dir 存在就说明解压完整。
    """
    if extract_dir.is_dir():
        logger.info("%s 已解压在 %s，跳过", archive.name, extract_dir)
        return extract_dir

    partial = extract_dir.with_name(extract_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    logger.info("正在解压 %s 到 %s", archive, extract_dir)
    safe_extract(archive, partial)
    os.replace(partial, extract_dir)
    return extract_dir


# ---------------------------------------------------------------------------
# 定位数据来源
# ---------------------------------------------------------------------------


@dataclass
class DatasetSources:
    """已解压的数据所在位置。annotation_dir、lists_dir 找不到时为 None。"""

    images_dir: Path
    annotation_dir: Path | None
    lists_dir: Path | None


def _has_split_mats(folder: Path) -> bool:
    return (folder / "train_list.mat").is_file() and (folder / "test_list.mat").is_file()


def _has_synset_folders(folder: Path) -> bool:
    return any(child.is_dir() and SYNSET_PREFIX.match(child.name) for child in folder.iterdir())


def _find_extracted(root: Path, archive_name: str) -> Path | None:
    """在 root 下找已解压的组件：根目录本身，或本脚本解压出的 `<归档名>/` 子目录。"""
    stem = archive_name.removesuffix(".tar")
    for base in (root, root / stem):
        if archive_name == "images.tar" and (base / "Images").is_dir():
            return base / "Images"
        if archive_name == "annotation.tar" and (base / "Annotation").is_dir():
            return base / "Annotation"
        if archive_name == "lists.tar" and _has_split_mats(base):
            return base
    return None


def _component_in_extract_dir(extract_dir: Path, archive_name: str) -> Path:
    component = _find_extracted(extract_dir, archive_name)
    if component is None:
        raise PrepareError(
            f"解压 {archive_name} 后在 {extract_dir} 里没有找到预期的内容。"
            f"归档可能不是官方文件，请删除 {extract_dir} 和该归档后重试。"
        )
    return component


def locate_local_sources(
    source_dir: Path, download_dir: Path, expected_sha256: dict[str, str | None]
) -> DatasetSources:
    """在 --source_dir 中找已解压的文件夹或归档，找到的归档解压到 download_dir 下。"""
    if not source_dir.is_dir():
        raise PrepareError(f"--source_dir 指定的目录 {source_dir} 不存在，请检查路径。")

    found: dict[str, Path | None] = {}
    for archive_name in ARCHIVE_NAMES:
        component = _find_extracted(source_dir, archive_name)
        if component is None and archive_name == "images.tar" and _has_synset_folders(source_dir):
            component = source_dir
        if component is None:
            component = _find_extracted(download_dir, archive_name)
        archive = source_dir / archive_name
        if component is None and archive.is_file():
            verify_sha256(archive, expected_sha256.get(archive_name), delete_on_mismatch=False)
            extract_dir = extract_archive(archive, download_dir / archive_name.removesuffix(".tar"))
            component = _component_in_extract_dir(extract_dir, archive_name)
        found[archive_name] = component

    if found["images.tar"] is None:
        raise PrepareError(
            f"在 --source_dir {source_dir} 中找不到图片：需要 Images/ 文件夹、"
            "直接包含品种文件夹（如 n02099601-golden_retriever）的目录，或 images.tar。"
        )
    return DatasetSources(found["images.tar"], found["annotation.tar"], found["lists.tar"])


def download_sources(
    base_url: str,
    download_dir: Path,
    archive_names: Sequence[str],
    expected_sha256: dict[str, str | None],
    *,
    timeout: float,
    retries: int,
) -> DatasetSources:
    """下载并解压 archive_names 中还没有解压在 download_dir 下的官方归档。"""
    found: dict[str, Path | None] = {name: None for name in ARCHIVE_NAMES}
    for archive_name in archive_names:
        component = _find_extracted(download_dir, archive_name)
        if component is None:
            url = base_url.rstrip("/") + "/" + archive_name
            archive = download_file(
                url,
                download_dir / archive_name,
                expected_sha256=expected_sha256.get(archive_name),
                timeout=timeout,
                retries=retries,
            )
            extract_dir = extract_archive(archive, download_dir / archive_name.removesuffix(".tar"))
            component = _component_in_extract_dir(extract_dir, archive_name)
        else:
            logger.info("%s 已解压在 %s，跳过下载", archive_name, component)
        found[archive_name] = component
    return DatasetSources(found["images.tar"], found["annotation.tar"], found["lists.tar"])


# ---------------------------------------------------------------------------
# 选择品种
# ---------------------------------------------------------------------------


def breed_key(folder_name: str) -> str:
    """去掉文件夹名开头的 WordNet id（`n02099601-`），其他名字原样返回。"""
    return SYNSET_PREFIX.sub("", folder_name, count=1)


def _normalize_breed(name: str) -> str:
    return name.strip().replace(" ", "_").lower()


def select_breeds(available_folders: Iterable[str], spec: str) -> list[str]:
    """按 --breeds 的值从 available_folders 中选出品种文件夹，按名字排序返回。

    spec 可以是 `10`（课程默认的 10 个品种）、`all`，或逗号分隔的品种名。品种名可以写
    品种部分（`golden_retriever`，不区分大小写，空格等同下划线）、完整文件夹名或 WordNet id。
    其他数字、找不到的名字和空列表都会抛出 PrepareError。
    """
    folders = sorted(available_folders)
    if not folders:
        raise PrepareError("图片目录里没有任何品种文件夹，请检查数据来源。")

    spec = spec.strip()
    if spec.lower() == "all":
        return folders

    lookup: dict[str, str] = {}
    for folder in folders:
        lookup[_normalize_breed(folder)] = folder
        lookup[_normalize_breed(breed_key(folder))] = folder
        if SYNSET_PREFIX.match(folder):
            lookup[folder.split("-", 1)[0].lower()] = folder

    if spec.isdigit():
        if spec != "10":
            raise PrepareError(
                f"--breeds 的值 {spec!r} 无效：数字只支持 10（课程默认的 10 个品种）。"
                "要全部品种请写 all，要指定品种请写逗号分隔的品种名。"
            )
        missing = [name for name in DEFAULT_BREEDS if _normalize_breed(name) not in lookup]
        if missing:
            raise PrepareError(
                f"数据来源中缺少课程默认品种：{', '.join(missing)}。"
                "请确认数据来源包含完整的 Stanford Dogs 图片，或用 --breeds 指定其他品种。"
            )
        return sorted(lookup[_normalize_breed(name)] for name in DEFAULT_BREEDS)

    requested = [name for name in spec.split(",") if name.strip()]
    if not requested:
        raise PrepareError("--breeds 的值为空：请写 10、all，或逗号分隔的品种名。")

    selected: set[str] = set()
    for name in requested:
        folder = lookup.get(_normalize_breed(name))
        if folder is None:
            keys = [breed_key(f) for f in folders]
            suggestions = difflib.get_close_matches(name.strip().replace(" ", "_"), keys, n=3, cutoff=0.6)
            hint = f"你是不是想写 {', '.join(suggestions)}？" if suggestions else ""
            raise PrepareError(
                f"--breeds 中的品种 {name.strip()!r} 在数据来源中找不到。{hint}"
                "品种名写文件夹名中 `-` 之后的部分，例如 golden_retriever。"
            )
        selected.add(folder)
    return sorted(selected)


# ---------------------------------------------------------------------------
# 裁剪与缩放
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundingBox:
    """PASCAL VOC 标注中的一个框，单位为像素。

    image_size 是标注里 <size> 记录的 (width, height)，没有记录时为 None。
    """

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    image_size: tuple[int, int] | None = None


def read_first_box(annotation_path: Path) -> BoundingBox:
    """读取 PASCAL VOC 标注文件中第一个 object 的 bndbox。

    文件不存在、XML 无效或缺少坐标时抛出 OSError、ET.ParseError 或 ValueError。
    """
    root = ET.parse(annotation_path).getroot()
    box_element = root.find("object/bndbox")
    if box_element is None:
        raise ValueError("标注里没有 object/bndbox")

    coordinates = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = box_element.findtext(tag)
        if text is None:
            raise ValueError(f"标注的 bndbox 缺少 {tag}")
        coordinates.append(round(float(text)))

    width = root.findtext("size/width")
    height = root.findtext("size/height")
    image_size = None
    if width and height and width.strip().isdigit() and height.strip().isdigit():
        image_size = (int(width), int(height))
    return BoundingBox(*coordinates, image_size=image_size)


def _crop(image: Image.Image, box: BoundingBox) -> Image.Image:
    left, top = max(box.xmin, 0), max(box.ymin, 0)
    right, bottom = min(box.xmax, image.width), min(box.ymax, image.height)
    if right <= left or bottom <= top:
        raise ValueError(f"标注框 {box.xmin},{box.ymin},{box.xmax},{box.ymax} 在 {image.width}×{image.height} 的图片之外或为空")
    return image.crop((left, top, right, bottom))


def crop_and_resize(
    image_path: Path,
    output_path: Path,
    *,
    box: BoundingBox | None = None,
    size: int | None = None,
    jpeg_quality: int = 95,
) -> None:
    """把图片按 EXIF 方向转正、转成 RGB，可选地裁剪到 box、缩放到 size×size（不保持宽高比），再保存。

    既不裁剪也不缩放、且图片已是 RGB 且方向正常时，原样复制文件。
    输出先写到 `.tmp` 文件再重命名，所以 output_path 存在就说明写入完整。
    图片无法解码时抛出 CorruptImageError，此时不写任何文件。
    """
    output_path = Path(output_path)
    try:
        with Image.open(image_path) as opened:
            opened.load()
            orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
            image = opened.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"无法解码图片 {image_path}：{err}") from err

    transpose = EXIF_ORIENTATION_TRANSPOSE.get(orientation)
    temporary = output_path.with_name(output_path.name + ".tmp")
    output_path.parent.mkdir(parents=True, exist_ok=True)

    if box is None and size is None and transpose is None and image.mode == "RGB":
        shutil.copyfile(image_path, temporary)
        os.replace(temporary, output_path)
        return

    if box is not None:
        # NOTE: 假定标注框的坐标是按文件中存储的像素方向标的。只有当标注记录的尺寸
        # 与转正后的尺寸一致、却与存储尺寸不一致时，才先转正再裁剪。
        displayed_size = image.transpose(transpose).size if transpose is not None else image.size
        if transpose is not None and box.image_size == displayed_size and box.image_size != image.size:
            image = _crop(image.transpose(transpose), box)
        else:
            image = _crop(image, box)
            if transpose is not None:
                image = image.transpose(transpose)
    elif transpose is not None:
        image = image.transpose(transpose)

    image = image.convert("RGB")
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BICUBIC)

    image_format = "PNG" if output_path.suffix.lower() == ".png" else "JPEG"
    try:
        image.save(temporary, format=image_format, quality=jpeg_quality)
        os.replace(temporary, output_path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass
class PrepareStats:
    """处理图片的计数。skipped 是被跳过的损坏图片或缺少有效标注的图片。"""

    written: int = 0
    existing: int = 0
    skipped: list[Path] = field(default_factory=list)


def prepare_images(
    images_dir: Path,
    output_dir: Path,
    folders: Sequence[str],
    *,
    annotation_dir: Path | None = None,
    crop: bool = False,
    size: int | None = None,
) -> PrepareStats:
    """把 folders 中每个品种的图片处理后写到 output_dir/<品种文件夹>/<原文件名>。

    输出文件已存在的图片直接跳过。损坏的图片，以及 crop 时标注缺失或无效的图片，
    各打印一条警告后跳过，计入 skipped。
    """
    if crop and annotation_dir is None:
        raise PrepareError("使用 --crop 需要标注：请提供 annotation.tar 或已解压的 Annotation/ 文件夹。")

    stats = PrepareStats()
    for index, folder in enumerate(folders, start=1):
        source_folder = images_dir / folder
        target_folder = output_dir / folder
        target_folder.mkdir(parents=True, exist_ok=True)
        # 删除上次运行中断时留下的临时文件。target_folder 里的 .tmp 文件只可能是本函数写的。
        for stale in target_folder.glob("*.tmp"):
            stale.unlink()

        image_paths = sorted(
            path for path in source_folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        logger.info("[%d/%d] %s：%d 张图片", index, len(folders), folder, len(image_paths))

        for image_path in image_paths:
            output_path = target_folder / image_path.name
            if output_path.exists():
                stats.existing += 1
                continue

            box = None
            if crop:
                annotation_path = annotation_dir / folder / image_path.stem
                try:
                    box = read_first_box(annotation_path)
                except (OSError, ET.ParseError, ValueError) as err:
                    logger.warning("跳过 %s：无法读取标注 %s（%s）", image_path, annotation_path, err)
                    stats.skipped.append(image_path)
                    continue

            try:
                crop_and_resize(image_path, output_path, box=box, size=size)
            except CorruptImageError as err:
                logger.warning("跳过损坏的图片：%s", err)
                stats.skipped.append(image_path)
                continue
            except ValueError as err:
                logger.warning("跳过 %s：%s", image_path, err)
                stats.skipped.append(image_path)
                continue
            stats.written += 1
    return stats


def check_output_options(output_dir: Path, crop: bool, size: int | None) -> None:
    """把本次的 --crop 和 --size 记录到输出目录，目录以前用别的选项生成过时抛出 PrepareError。

    已存在的输出文件会被跳过，所以选项不同时继续写会得到混杂的数据集。
    """
    options_path = output_dir / OPTIONS_FILE_NAME
    options = {"crop": crop, "size": size}
    if options_path.is_file():
        try:
            previous = json.loads(options_path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise PrepareError(
                f"无法读取 {options_path}：{err}。请删除该文件，并确认输出目录里的图片是用这次的选项生成的。"
            ) from err
        if not isinstance(previous, dict):
            previous = {}
        if previous != options:
            raise PrepareError(
                f"输出目录 {output_dir} 之前是用 --crop={previous.get('crop')}、--size={previous.get('size')} "
                f"生成的，与这次的 --crop={crop}、--size={size} 不同。"
                "请换一个 --output 目录，或删除该目录后重新运行。"
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    options_path.write_text(json.dumps(options) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# 官方划分
# ---------------------------------------------------------------------------


def require_scipy() -> None:
    """scipy 不可用时抛出 PrepareError，提示安装。"""
    try:
        import scipy.io  # noqa: F401
    except ImportError as err:
        raise PrepareError(
            "读取官方划分文件 train_list.mat / test_list.mat 需要 scipy，但当前环境无法导入它"
            f"（{err}）。请运行 `pip install scipy` 后重试。"
        ) from err


def _mat_strings(cell_array, mat_path: Path) -> list[str]:
    """把 loadmat 读出的 cell 数组（每个元素是只含一个字符串的数组）转成字符串列表。"""
    names = []
    for item in cell_array.ravel():
        while not isinstance(item, str):
            if getattr(item, "size", 0) != 1:
                raise PrepareError(f"{mat_path} 中的 file_list 格式不对：{item!r} 不是单个字符串。请重新下载 lists.tar。")
            item = item.ravel()[0]
        names.append(str(item).strip().replace("\\", "/"))
    return names


def read_split_lists(lists_dir: Path) -> tuple[list[str], list[str]]:
    """读取 lists_dir 中 train_list.mat 和 test_list.mat 的 file_list，返回 (训练集, 测试集)。"""
    require_scipy()
    from scipy.io import loadmat

    splits = []
    for file_name in ("train_list.mat", "test_list.mat"):
        mat_path = lists_dir / file_name
        try:
            mat = loadmat(mat_path)
        except (OSError, ValueError) as err:
            raise PrepareError(f"无法读取 {mat_path}：{err}。请重新下载或解压 lists.tar。") from err
        if "file_list" not in mat:
            raise PrepareError(f"{mat_path} 中没有 file_list 变量，它可能不是官方的划分文件。请重新下载 lists.tar。")
        splits.append(_mat_strings(mat["file_list"], mat_path))
    return splits[0], splits[1]


def write_split_lists(splits_dir: Path, train_files: Iterable[str], test_files: Iterable[str]) -> None:
    """把训练集和测试集文件名去重、排序后写入 splits_dir/train.txt 和 test.txt，每行一个。

    内容与已有文件相同时不重写。两个列表有交集时抛出 PrepareError。
    """
    train_set, test_set = set(train_files), set(test_files)
    overlap = sorted(train_set & test_set)
    if overlap:
        raise PrepareError(
            f"官方划分中有 {len(overlap)} 个文件同时在训练集和测试集里，例如 {overlap[0]}。"
            "lists.tar 可能已损坏，请重新下载。"
        )

    splits_dir.mkdir(parents=True, exist_ok=True)
    for file_name, names in (("train.txt", train_set), ("test.txt", test_set)):
        path = splits_dir / file_name
        content = "".join(name + "\n" for name in sorted(names))
        if path.is_file() and path.read_text(encoding="utf-8") == content:
            logger.info("%s 已是最新，跳过", path)
            continue
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, path)
        logger.info("已写入 %s（%d 个文件）", path, len(names))


# ---------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------


def _parse_sha256_override(value: str) -> tuple[str, str]:
    file_name, separator, digest = value.partition("=")
    if not separator or file_name not in ARCHIVE_NAMES:
        raise argparse.ArgumentTypeError(
            f"{value!r} 无效：格式应为 文件名=哈希，文件名是 {'、'.join(ARCHIVE_NAMES)} 之一"
        )
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise argparse.ArgumentTypeError(f"{value!r} 中的哈希无效：SHA-256 应是 64 个十六进制字符")
    return file_name, digest.lower()


def _integer_at_least(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} 不是整数") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} 无效：必须是不小于 {minimum} 的整数")
        return number

    return parse


class _ChineseUsageFormatter(argparse.HelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):
        return super().add_usage(usage, actions, groups, prefix="用法：" if prefix is None else prefix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=_ChineseUsageFormatter,
        description=(
            "准备 Stanford Dogs 数据集（ImageFolder 布局）：下载或读取本地副本，安全解压，"
            "可选裁剪到标注框并缩放，选出品种子集，写出官方训练/测试划分。"
            "图片只能用于非商业的研究与教学，不要提交到仓库。"
        ),
        add_help=False,
        allow_abbrev=False,
    )
    # argparse 自带的小节标题和 -h 说明是英文；本脚本不导入 visionft（安装前也能运行），所以在这里换成中文
    parser._optionals.title = "选项"
    parser.add_argument("-h", "--help", action="help", help="显示帮助并退出")
    source = parser.add_argument_group("数据来源")
    source.add_argument(
        "--source_dir", type=Path, default=None,
        help="本地已有的 Stanford Dogs：含 images.tar/annotation.tar/lists.tar，"
        "或已解压的 Images/（可再加 Annotation/ 和 train_list.mat、test_list.mat）的目录。"
        "不给时从 --base_url 下载。",
    )
    source.add_argument(
        "--base_url", default=DEFAULT_BASE_URL,
        help=f"下载官方归档的地址（默认：{DEFAULT_BASE_URL}）",
    )
    source.add_argument(
        "--download_dir", type=Path, default=DEFAULT_DOWNLOAD_DIR,
        help="下载缓存目录，归档也解压在这里（默认：仓库根目录下的 data/downloads）",
    )
    source.add_argument(
        "--sha256", action="append", default=[], type=_parse_sha256_override, metavar="FILE=HASH",
        help="要求某个归档的 SHA-256 等于 HASH，例如 lists.tar=<64 位十六进制>，可重复给出。"
        "不一致时报错，下载的文件会被删除",
    )
    source.add_argument("--timeout", type=float, default=60.0, help="下载时网络读写的超时，单位秒（默认：60）")
    source.add_argument(
        "--retries", type=_integer_at_least(0), default=3,
        help="下载中断或服务器出错（5xx）后自动重试的最大次数，每次从断点续传（默认：3）",
    )

    output = parser.add_argument_group("输出")
    output.add_argument(
        "--breeds", default="10",
        help="要准备的品种：10 表示课程默认的 10 个品种（" + ", ".join(DEFAULT_BREEDS) + "），"
        "all 表示全部 120 个，也可以写逗号分隔的品种名或文件夹名，例如 pug,Samoyed（默认：10）",
    )
    output.add_argument(
        "--output", type=Path, default=None,
        help="输出目录，每个品种一个子文件夹（默认：仓库根目录下的 data/stanford-dogs-<品种数>）",
    )
    output.add_argument(
        "--splits_dir", type=Path, default=None,
        help=f"写 train.txt 和 test.txt 的目录（默认：输出目录旁边的 {SPLITS_DIR_NAME}/）",
    )
    output.add_argument("--crop", action="store_true", help="把每张图片裁剪到标注中的第一个框（需要标注）")
    output.add_argument(
        "--size", type=_integer_at_least(1), default=None,
        help="把图片缩放到 SIZE×SIZE 像素，不保持宽高比，例如 224（默认：不缩放）",
    )
    return parser


def _log_split_counts(train_files: list[str], test_files: list[str], folders: Sequence[str]) -> None:
    selected = set(folders)
    train_count = sum(1 for name in train_files if name.split("/", 1)[0] in selected)
    test_count = sum(1 for name in test_files if name.split("/", 1)[0] in selected)
    logger.info("所选的 %d 个品种在官方划分中：训练集 %d 张，测试集 %d 张", len(folders), train_count, test_count)


def prepare_dataset(args: argparse.Namespace) -> PrepareStats:
    """按命令行参数完成全部步骤：定位或下载数据、选品种、处理图片、写划分。"""
    expected_sha256 = dict(KNOWN_SHA256)
    expected_sha256.update(dict(args.sha256))

    if args.source_dir is not None:
        sources = locate_local_sources(args.source_dir, args.download_dir, expected_sha256)
    else:
        # 先检查 scipy，免得下载了几百 MB 之后才发现读不了划分文件。
        require_scipy()
        needed = ["images.tar", "lists.tar"] + (["annotation.tar"] if args.crop else [])
        sources = download_sources(
            args.base_url, args.download_dir, needed, expected_sha256,
            timeout=args.timeout, retries=args.retries,
        )

    if args.crop and sources.annotation_dir is None:
        raise PrepareError(
            f"使用 --crop 需要标注，但在 {args.source_dir} 中找不到 Annotation/ 文件夹或 annotation.tar。"
            "请提供标注，或去掉 --crop。"
        )
    if sources.lists_dir is not None:
        require_scipy()

    available = [path.name for path in sources.images_dir.iterdir() if path.is_dir()]
    folders = select_breeds(available, args.breeds)
    output_dir = args.output or REPO_ROOT / "data" / f"stanford-dogs-{len(folders)}"
    splits_dir = args.splits_dir or output_dir.parent / SPLITS_DIR_NAME
    logger.info("从 %s 准备 %d 个品种到 %s", sources.images_dir, len(folders), output_dir)

    check_output_options(output_dir, args.crop, args.size)
    stats = prepare_images(
        sources.images_dir, output_dir, folders,
        annotation_dir=sources.annotation_dir, crop=args.crop, size=args.size,
    )

    if sources.lists_dir is None:
        logger.warning(
            "找不到官方划分文件 train_list.mat / test_list.mat（或 lists.tar），没有写 train.txt 和 test.txt。"
            "需要官方划分时，请把 lists.tar 放进 --source_dir 后重新运行。"
        )
    else:
        train_files, test_files = read_split_lists(sources.lists_dir)
        write_split_lists(splits_dir, train_files, test_files)
        _log_split_counts(train_files, test_files, folders)

    logger.info(
        "完成：新写入 %d 张，已存在跳过 %d 张，图片损坏或标注无效跳过 %d 张。输出目录：%s",
        stats.written, stats.existing, len(stats.skipped), output_dir,
    )
    if stats.skipped:
        logger.warning("有 %d 个文件被跳过，原因见上面的警告", len(stats.skipped))
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    logger.setLevel(logging.INFO)

    try:
        prepare_dataset(args)
    except PrepareError as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
