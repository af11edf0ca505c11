"""scripts/prepare_dog_dataset.py 的测试。

所有输入（tar 归档、JPEG、PASCAL VOC 标注、.mat 划分文件）都由测试在 tmp_path 里生成。
下载测试只连接测试自己在 127.0.0.1 上启动的 HTTP 服务器。
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import random
import re
import signal
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

SCRIPT_PATH = Path(__file__).resolve().parents[1] / "scripts" / "prepare_dog_dataset.py"
_spec = importlib.util.spec_from_file_location("prepare_dog_dataset", SCRIPT_PATH)
prep = importlib.util.module_from_spec(_spec)
sys.modules["prepare_dog_dataset"] = prep
_spec.loader.exec_module(prep)

DEFAULT_FOLDERS = [
    "n02099601-golden_retriever",
    "n02099712-Labrador_retriever",
    "n02106166-Border_collie",
    "n02106662-German_shepherd",
    "n02110185-Siberian_husky",
    "n02110958-pug",
    "n02111889-Samoyed",
    "n02112018-Pomeranian",
    "n02113023-Pembroke",
    "n02113624-toy_poodle",
]
EXTRA_FOLDERS = ["n02085620-Chihuahua", "n02086240-Shih-Tzu", "n02106030-collie"]


# ---------------------------------------------------------------------------
# 生成测试输入的工具
# ---------------------------------------------------------------------------


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, member_type: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = member_type
    info.linkname = linkname
    tar.addfile(info)


def save_jpeg(path: Path, size=(60, 40), color=(200, 30, 30), box=None, box_color=(30, 30, 200), mode="RGB", exif=None):
    """保存一张纯色 JPEG，box 给出时在该区域内画另一种颜色。"""
    image = Image.new("RGB", size, color)
    if box is not None:
        image.paste(box_color, box)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif is None:
        image.save(path, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(path, format="JPEG", quality=95, subsampling=0, exif=exif)


def write_annotation(path: Path, boxes, size=(60, 40)) -> None:
    """写一个 Stanford Dogs 风格的 PASCAL VOC 标注（无扩展名），boxes 是 (xmin, ymin, xmax, ymax) 列表。"""
    objects = "".join(
        f"<object><name>dog</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    xml = (
        f"<annotation><folder>02085620</folder><filename>{path.name}</filename>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"{objects}</annotation>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(xml, encoding="utf-8")


def write_split_mat(path: Path, names: list[str]) -> None:
    """按官方 train_list.mat 的结构写 file_list：N×1 的 cell 数组，每格一个字符串。"""
    np = pytest.importorskip("numpy")
    scipy_io = pytest.importorskip("scipy.io")
    cells = np.empty((len(names), 1), dtype=object)
    for index, name in enumerate(names):
        cells[index, 0] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"file_list": cells})


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def time_limit():
    """让单个测试最多运行 30 秒，超时抛出 TimeoutError 而不是挂住。没有 SIGALRM 的系统（Windows）上不限时。"""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError("测试运行超过 30 秒")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------
# 安全解压
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("absolute", "绝对路径"),
        ("parent", "`..`"),
        ("nested_parent", "`..`"),
        ("symlink", "符号链接"),
        ("relative_symlink", "符号链接"),
        ("hardlink", "硬链接"),
        ("char_device", "设备文件"),
        ("block_device", "设备文件"),
        ("fifo", "FIFO"),
    ],
)
def test_safe_extract_rejects_unsafe_member(tmp_path, case, reason):
    outside = tmp_path / "outside"
    outside.mkdir()
    member_names = {
        "absolute": str(outside / "evil.txt"),
        "parent": "../outside/evil.txt",
        "nested_parent": "data/../../outside/evil.txt",
        "symlink": "data/link",
        "relative_symlink": "data/link",
        "hardlink": "data/hard",
        "char_device": "data/tty",
        "block_device": "data/disk",
        "fifo": "data/pipe",
    }
    member_name = member_names[case]
    archive = tmp_path / f"{case}.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "data/good.txt", b"good")
        if case in ("absolute", "parent", "nested_parent"):
            add_file(tar, member_name, b"evil")
        elif case == "symlink":
            add_special(tar, member_name, tarfile.SYMTYPE, linkname=str(outside))
        elif case == "relative_symlink":
            add_special(tar, member_name, tarfile.SYMTYPE, linkname="good.txt")
        elif case == "hardlink":
            add_special(tar, member_name, tarfile.LNKTYPE, linkname="data/good.txt")
        elif case == "char_device":
            add_special(tar, member_name, tarfile.CHRTYPE)
        elif case == "block_device":
            add_special(tar, member_name, tarfile.BLKTYPE)
        elif case == "fifo":
            add_special(tar, member_name, tarfile.FIFOTYPE)

    target = tmp_path / "target"
    with pytest.raises(prep.UnsafeArchiveError) as excinfo:
        prep.safe_extract(archive, target)

    message = str(excinfo.value)
    assert reason in message
    assert repr(member_name) in message
    assert str(archive) in message
    # 有一个成员不安全时什么都不写，连排在前面的安全成员也不写。
    assert not (target / "data" / "good.txt").exists()
    assert list(outside.iterdir()) == []


def test_safe_extract_writes_good_archive(tmp_path):
    archive = tmp_path / "good.tar"
    with tarfile.open(archive, "w") as tar:
        directory = tarfile.TarInfo("Images/n02110958-pug")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        add_file(tar, "Images/n02110958-pug/n02110958_1.jpg", b"first")
        add_file(tar, "Images/n02110958-pug/n02110958_2.jpg", b"second")
        add_file(tar, "./readme.txt", b"readme")

    target = tmp_path / "target"
    prep.safe_extract(archive, target)

    assert (target / "Images/n02110958-pug/n02110958_1.jpg").read_bytes() == b"first"
    assert (target / "Images/n02110958-pug/n02110958_2.jpg").read_bytes() == b"second"
    assert (target / "readme.txt").read_bytes() == b"readme"


def test_safe_extract_corrupt_archive_error(tmp_path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"this is not a tar archive" * 40)

    with pytest.raises(prep.PrepareError) as excinfo:
        prep.safe_extract(archive, tmp_path / "target")

    assert str(archive) in str(excinfo.value)


def test_extract_archive_skips_when_done(tmp_path):
    archive = tmp_path / "lists.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "train_list.mat", b"train")
    extract_dir = tmp_path / "lists"
    stale_partial = tmp_path / "lists.partial"
    stale_partial.mkdir()
    (stale_partial / "leftover").write_bytes(b"from an interrupted run")

    assert prep.extract_archive(archive, extract_dir) == extract_dir
    assert (extract_dir / "train_list.mat").read_bytes() == b"train"
    assert not (extract_dir / "leftover").exists()
    assert not stale_partial.exists()

    # 解压目录已存在时不再读取归档，所以删掉归档也能再次运行。
    archive.unlink()
    assert prep.extract_archive(archive, extract_dir) == extract_dir


# ---------------------------------------------------------------------------
# SHA-256 校验
# ---------------------------------------------------------------------------


def test_verify_sha256_mismatch_deletes_file(tmp_path):
    path = tmp_path / "images.tar"
    path.write_bytes(b"tampered")

    with pytest.raises(prep.ChecksumError) as excinfo:
        prep.verify_sha256(path, "0" * 64)

    assert not path.exists()
    assert str(path) in str(excinfo.value)
    assert "重新运行" in str(excinfo.value)


def test_verify_sha256_mismatch_keeps_user_file(tmp_path):
    path = tmp_path / "images.tar"
    path.write_bytes(b"user copy")

    with pytest.raises(prep.ChecksumError):
        prep.verify_sha256(path, "0" * 64, delete_on_mismatch=False)

    assert path.read_bytes() == b"user copy"


def test_verify_sha256_accepts_match_and_unknown(tmp_path, caplog):
    path = tmp_path / "lists.tar"
    path.write_bytes(b"lists")
    digest = sha256_of(b"lists")

    assert prep.verify_sha256(path, digest.upper()) == digest
    with caplog.at_level("INFO", logger="prepare_dog_dataset"):
        assert prep.verify_sha256(path, None) == digest

    assert path.exists()
    assert digest in caplog.text


def test_sha256_option_rejects_bad_values():
    parser = prep.build_parser()
    args = parser.parse_args(["--sha256", "lists.tar=" + "AB" * 32])
    assert args.sha256 == [("lists.tar", "ab" * 32)]

    for bad_value in ("lists.tar=1234", "other.tar=" + "ab" * 32, "lists.tar"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--sha256", bad_value])


# ---------------------------------------------------------------------------
# 下载与断点续传（本地 HTTP 服务器）
# ---------------------------------------------------------------------------


def make_handler(payload: bytes, *, support_range: bool = True, cut_first_response_at: int | None = None):
    """生成一个只提供 payload 的请求处理类，记录每个请求的 Range 头。

    support_range 为假时忽略 Range、总是返回 200 和完整内容。cut_first_response_at
    给出时，第一个响应声明完整长度，但只发送这么多字节就断开连接，模拟下载中断。
    """

    class Handler(BaseHTTPRequestHandler):
        range_headers: list[str | None] = []
        responses_sent = 0

        def do_GET(self):
            range_header = self.headers.get("Range")
            type(self).range_headers.append(range_header)
            start = 0
            if support_range and range_header:
                start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
                if start >= len(payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()

            body = payload[start:]
            if cut_first_response_at is not None and type(self).responses_sent == 0:
                body = body[:cut_first_response_at]
            type(self).responses_sent += 1
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    return Handler


@pytest.fixture
def http_server():
    """返回启动函数 start(处理类)：在 127.0.0.1 的空闲端口上启动服务器并返回基础 URL。

    测试结束时关闭所有启动过的服务器。
    """
    servers = []

    def start(handler):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def payload():
    return random.Random(0).randbytes(200_000)


def test_download_resumes_partial_file(tmp_path, http_server, payload, time_limit):
    handler = make_handler(payload)
    base_url = http_server(handler)
    dest = tmp_path / "images.tar"
    part = tmp_path / "images.tar.part"
    part.write_bytes(payload[:70_000])

    prep.download_file(
        f"{base_url}/images.tar", dest, expected_sha256=sha256_of(payload), timeout=5, retries=0, chunk_size=8192
    )

    assert handler.range_headers == ["bytes=70000-"]
    assert dest.read_bytes() == payload
    assert not part.exists()


def test_download_retries_after_interruption(tmp_path, http_server, payload, time_limit):
    handler = make_handler(payload, cut_first_response_at=50_000)
    base_url = http_server(handler)
    dest = tmp_path / "images.tar"

    prep.download_file(
        f"{base_url}/images.tar", dest, expected_sha256=sha256_of(payload),
        timeout=5, retries=1, retry_delay=0, chunk_size=8192,
    )

    assert handler.range_headers == [None, "bytes=50000-"]
    assert dest.read_bytes() == payload


def test_download_interrupted_then_rerun(tmp_path, http_server, payload, time_limit):
    handler = make_handler(payload, cut_first_response_at=50_000)
    base_url = http_server(handler)
    dest = tmp_path / "images.tar"
    part = tmp_path / "images.tar.part"

    with pytest.raises(prep.DownloadError) as excinfo:
        prep.download_file(f"{base_url}/images.tar", dest, timeout=5, retries=0, chunk_size=8192)
    assert str(part) in str(excinfo.value)
    assert not dest.exists()
    assert part.read_bytes() == payload[:50_000]

    prep.download_file(f"{base_url}/images.tar", dest, timeout=5, retries=0, chunk_size=8192)

    assert handler.range_headers == [None, "bytes=50000-"]
    assert dest.read_bytes() == payload
    assert not part.exists()


def test_download_restarts_when_range_ignored(tmp_path, http_server, payload, time_limit):
    handler = make_handler(payload, support_range=False)
    base_url = http_server(handler)
    dest = tmp_path / "images.tar"
    part = tmp_path / "images.tar.part"
    # 内容故意与 payload 不同：如果客户端把 200 的完整响应接在后面，结果会又长又错。
    part.write_bytes(b"x" * 70_000)

    prep.download_file(
        f"{base_url}/images.tar", dest, expected_sha256=sha256_of(payload), timeout=5, retries=0, chunk_size=8192
    )

    assert handler.range_headers == ["bytes=70000-"]
    assert dest.read_bytes() == payload
    assert not part.exists()


def test_download_complete_part_gets_416(tmp_path, http_server, payload, time_limit):
    handler = make_handler(payload)
    base_url = http_server(handler)
    dest = tmp_path / "images.tar"
    (tmp_path / "images.tar.part").write_bytes(payload)

    prep.download_file(f"{base_url}/images.tar", dest, timeout=5, retries=0)

    assert handler.range_headers == [f"bytes={len(payload)}-"]
    assert dest.read_bytes() == payload


def test_download_checksum_mismatch_removes_file(tmp_path, http_server, payload, time_limit):
    base_url = http_server(make_handler(payload))
    dest = tmp_path / "images.tar"

    with pytest.raises(prep.ChecksumError):
        prep.download_file(f"{base_url}/images.tar", dest, expected_sha256="0" * 64, timeout=5, retries=0)

    assert not dest.exists()
    assert not (tmp_path / "images.tar.part").exists()


def test_download_existing_file_checked(tmp_path, payload):
    dest = tmp_path / "images.tar"
    dest.write_bytes(b"stale copy")

    # 没有服务器：dest 已存在时不发请求，只校验。
    with pytest.raises(prep.ChecksumError):
        prep.download_file("http://127.0.0.1:9/images.tar", dest, expected_sha256=sha256_of(payload), retries=0)

    assert not dest.exists()


def test_download_http_404_fails_fast(tmp_path, http_server, time_limit):
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, format, *args):
            pass

    base_url = http_server(NotFound)

    with pytest.raises(prep.DownloadError) as excinfo:
        prep.download_file(f"{base_url}/images.tar", tmp_path / "images.tar", timeout=5, retries=3, retry_delay=10)

    assert "404" in str(excinfo.value)


# ---------------------------------------------------------------------------
# 标注与裁剪
# ---------------------------------------------------------------------------


def test_read_first_box_uses_first_object(tmp_path):
    annotation = tmp_path / "n02085620_1"
    write_annotation(annotation, [(10, 5, 40, 25), (0, 0, 60, 40)])

    box = prep.read_first_box(annotation)

    assert (box.xmin, box.ymin, box.xmax, box.ymax) == (10, 5, 40, 25)
    assert box.image_size == (60, 40)


def test_read_first_box_without_object(tmp_path):
    annotation = tmp_path / "n02085620_1"
    write_annotation(annotation, [])

    with pytest.raises(ValueError):
        prep.read_first_box(annotation)


def test_crop_uses_annotation_box(tmp_path):
    source = tmp_path / "dog.jpg"
    save_jpeg(source, box=(10, 5, 40, 25))
    annotation = tmp_path / "dog"
    write_annotation(annotation, [(10, 5, 40, 25)])
    output = tmp_path / "out" / "dog.jpg"

    prep.crop_and_resize(source, output, box=prep.read_first_box(annotation))

    with Image.open(output) as image:
        assert image.size == (30, 20)
        assert image.mode == "RGB"
        # 框内是蓝色，框外是红色：裁剪结果的四角都应是蓝色。
        for corner in ((1, 1), (28, 1), (1, 18), (28, 18)):
            red, green, blue = image.getpixel(corner)
            assert blue > 150
            assert red < 100


def test_crop_then_resize(tmp_path):
    source = tmp_path / "dog.jpg"
    save_jpeg(source, box=(10, 5, 40, 25))
    output = tmp_path / "dog_224.jpg"

    prep.crop_and_resize(source, output, box=prep.BoundingBox(10, 5, 40, 25), size=16)

    with Image.open(output) as image:
        assert image.size == (16, 16)
        assert image.getpixel((8, 8))[2] > 150


def test_crop_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # 显示时需顺时针旋转 90 度
    source = tmp_path / "rotated.jpg"
    save_jpeg(source, size=(60, 40), box=(5, 5, 35, 15), exif=exif)
    output = tmp_path / "out.jpg"

    # 标注尺寸与存储尺寸（60×40）一致，所以按存储方向裁剪 30×10，再转正成 10×30。
    prep.crop_and_resize(source, output, box=prep.BoundingBox(5, 5, 35, 15, image_size=(60, 40)))

    with Image.open(output) as image:
        assert image.size == (10, 30)
        assert image.getexif().get(0x0112) is None


def test_crop_converts_grayscale_to_rgb(tmp_path):
    source = tmp_path / "gray.jpg"
    save_jpeg(source, mode="L")
    output = tmp_path / "out.jpg"

    prep.crop_and_resize(source, output, box=prep.BoundingBox(0, 0, 20, 20))

    with Image.open(output) as image:
        assert image.mode == "RGB"


def test_copy_keeps_original_bytes(tmp_path):
    source = tmp_path / "dog.jpg"
    save_jpeg(source)
    output = tmp_path / "out" / "dog.jpg"

    prep.crop_and_resize(source, output)

    assert output.read_bytes() == source.read_bytes()


def test_crop_corrupt_image_raises(tmp_path):
    source = tmp_path / "broken.jpg"
    source.write_bytes(b"not a jpeg at all")
    output = tmp_path / "out.jpg"

    with pytest.raises(prep.CorruptImageError) as excinfo:
        prep.crop_and_resize(source, output, size=16)

    assert str(source) in str(excinfo.value)
    assert not output.exists()
    assert not (tmp_path / "out.jpg.tmp").exists()


# ---------------------------------------------------------------------------
# 选择品种
# ---------------------------------------------------------------------------


def test_select_breeds_default_ten():
    available = EXTRA_FOLDERS + list(reversed(DEFAULT_FOLDERS))

    assert prep.select_breeds(available, "10") == sorted(DEFAULT_FOLDERS)
    assert prep.select_breeds(available, "all") == sorted(available)


def test_select_breeds_by_name():
    available = DEFAULT_FOLDERS + EXTRA_FOLDERS

    assert prep.select_breeds(available, "pug, Samoyed") == ["n02110958-pug", "n02111889-Samoyed"]
    assert prep.select_breeds(available, "n02085620-Chihuahua") == ["n02085620-Chihuahua"]
    assert prep.select_breeds(available, "n02085620") == ["n02085620-Chihuahua"]
    assert prep.select_breeds(available, "Golden Retriever") == ["n02099601-golden_retriever"]
    assert prep.select_breeds(available, "shih-tzu") == ["n02086240-Shih-Tzu"]
    # collie 与 Border_collie 是两个品种，不能互相匹配。
    assert prep.select_breeds(available, "collie") == ["n02106030-collie"]
    assert prep.select_breeds(available, "pug,pug,") == ["n02110958-pug"]


def test_select_breeds_rejects_bad_spec():
    available = DEFAULT_FOLDERS + EXTRA_FOLDERS

    with pytest.raises(prep.PrepareError) as excinfo:
        prep.select_breeds(available, "golden_retreiver")
    assert "golden_retriever" in str(excinfo.value)

    with pytest.raises(prep.PrepareError):
        prep.select_breeds(available, "5")
    with pytest.raises(prep.PrepareError):
        prep.select_breeds(available, " , ")


def test_select_breeds_default_missing():
    available = [folder for folder in DEFAULT_FOLDERS if "pug" not in folder]

    with pytest.raises(prep.PrepareError) as excinfo:
        prep.select_breeds(available, "10")

    assert "pug" in str(excinfo.value)


# ---------------------------------------------------------------------------
# 官方划分
# ---------------------------------------------------------------------------


def test_write_split_lists_sorted(tmp_path, caplog):
    train = ["n02110958-pug/n02110958_2.jpg", "n02085620-Chihuahua/n02085620_10.jpg", "n02110958-pug/n02110958_10.jpg"]
    test = ["n02110958-pug/n02110958_1.jpg", "n02085620-Chihuahua/n02085620_1073.jpg"]

    prep.write_split_lists(tmp_path, train, test)

    assert (tmp_path / "train.txt").read_text(encoding="utf-8") == "".join(name + "\n" for name in sorted(train))
    assert (tmp_path / "test.txt").read_text(encoding="utf-8") == "".join(name + "\n" for name in sorted(test))

    with caplog.at_level("INFO", logger="prepare_dog_dataset"):
        prep.write_split_lists(tmp_path, train, test)
    assert "已是最新" in caplog.text


def test_write_split_lists_rejects_overlap(tmp_path):
    with pytest.raises(prep.PrepareError) as excinfo:
        prep.write_split_lists(tmp_path, ["a/1.jpg", "a/2.jpg"], ["a/2.jpg"])

    assert "a/2.jpg" in str(excinfo.value)
    assert not (tmp_path / "train.txt").exists()


def test_read_split_lists_from_mat(tmp_path):
    train = ["n02110958-pug/n02110958_2.jpg", "n02085620-Chihuahua/n02085620_10.jpg"]
    test = ["n02110958-pug/n02110958_1.jpg"]
    write_split_mat(tmp_path / "train_list.mat", train)
    write_split_mat(tmp_path / "test_list.mat", test)

    assert prep.read_split_lists(tmp_path) == (train, test)


def test_missing_scipy_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)

    with pytest.raises(prep.PrepareError) as excinfo:
        prep.require_scipy()

    assert "pip install scipy" in str(excinfo.value)


# ---------------------------------------------------------------------------
# 端到端：main([...])
# ---------------------------------------------------------------------------


def make_source_dir(root: Path) -> tuple[list[str], list[str]]:
    """在 root 下生成已解压的 Images/、Annotation/ 和 .mat 划分，返回 (训练集, 测试集)。

    每个品种两张 60×40 的图片，第一张属于训练集，第二张属于测试集。
    golden_retriever 另有一张损坏的图片。
    """
    train, test = [], []
    for folder in DEFAULT_FOLDERS + EXTRA_FOLDERS:
        synset = folder.split("-", 1)[0]
        for index, split in ((1, train), (2, test)):
            file_name = f"{synset}_{index}.jpg"
            save_jpeg(root / "Images" / folder / file_name, box=(10, 5, 40, 25))
            write_annotation(root / "Annotation" / folder / f"{synset}_{index}", [(10, 5, 40, 25)])
            split.append(f"{folder}/{file_name}")

    broken = root / "Images" / "n02099601-golden_retriever" / "n02099601_999.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    write_annotation(root / "Annotation" / "n02099601-golden_retriever" / "n02099601_999", [(10, 5, 40, 25)])
    test.append("n02099601-golden_retriever/n02099601_999.jpg")

    write_split_mat(root / "train_list.mat", list(reversed(train)))
    write_split_mat(root / "test_list.mat", list(reversed(test)))
    return train, test


def output_images(output: Path) -> dict[str, int]:
    return {str(path.relative_to(output)): path.stat().st_mtime_ns for path in sorted(output.glob("*/*.jpg"))}


def test_main_extracted_source_end_to_end(tmp_path, caplog):
    source = tmp_path / "source"
    train, test = make_source_dir(source)
    output = tmp_path / "data" / "stanford-dogs-10"
    argv = [
        "--source_dir", str(source), "--download_dir", str(tmp_path / "downloads"),
        "--output", str(output), "--crop", "--size", "16",
    ]

    with caplog.at_level("INFO", logger="prepare_dog_dataset"):
        assert prep.main(argv) == 0

    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == sorted(DEFAULT_FOLDERS)
    written = output_images(output)
    assert len(written) == 20
    for relative_path in written:
        with Image.open(output / relative_path) as image:
            assert image.size == (16, 16)
            assert image.mode == "RGB"
            assert image.getpixel((8, 8))[2] > 150
    assert not (output / "n02099601-golden_retriever" / "n02099601_999.jpg").exists()

    broken_warnings = [record for record in caplog.records if "n02099601_999.jpg" in record.getMessage()]
    assert len(broken_warnings) == 1
    assert broken_warnings[0].levelname == "WARNING"
    assert "跳过 1 张" in caplog.text

    splits_dir = tmp_path / "data" / "stanford-dogs-splits"
    assert (splits_dir / "train.txt").read_text(encoding="utf-8") == "".join(name + "\n" for name in sorted(train))
    assert (splits_dir / "test.txt").read_text(encoding="utf-8") == "".join(name + "\n" for name in sorted(test))
    assert not (tmp_path / "downloads").exists()

    # 再运行一次：已有的输出不重写。
    caplog.clear()
    with caplog.at_level("INFO", logger="prepare_dog_dataset"):
        assert prep.main(argv) == 0
    assert output_images(output) == written
    assert "已存在跳过 20 张" in caplog.text

    # 换了 --size 就不能继续写同一个输出目录。
    caplog.clear()
    assert prep.main(argv[:-1] + ["32"]) == 1
    assert str(output) in caplog.text
    assert output_images(output) == written


def test_main_archives_in_source_dir(tmp_path):
    extracted = tmp_path / "extracted"
    train, test = make_source_dir(extracted)
    source = tmp_path / "source"
    source.mkdir()
    with tarfile.open(source / "images.tar", "w") as tar:
        tar.add(extracted / "Images", arcname="Images")
    with tarfile.open(source / "lists.tar", "w") as tar:
        tar.add(extracted / "train_list.mat", arcname="train_list.mat")
        tar.add(extracted / "test_list.mat", arcname="test_list.mat")
    downloads = tmp_path / "downloads"
    output = tmp_path / "data" / "dogs"

    argv = ["--source_dir", str(source), "--download_dir", str(downloads), "--output", str(output), "--breeds", "pug,Chihuahua"]
    assert prep.main(argv) == 0

    assert (downloads / "images" / "Images" / "n02110958-pug" / "n02110958_1.jpg").is_file()
    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == ["n02085620-Chihuahua", "n02110958-pug"]
    assert (output / "n02110958-pug" / "n02110958_1.jpg").read_bytes() == (
        extracted / "Images" / "n02110958-pug" / "n02110958_1.jpg"
    ).read_bytes()
    splits_dir = tmp_path / "data" / "stanford-dogs-splits"
    assert (splits_dir / "train.txt").read_text(encoding="utf-8").splitlines() == sorted(train)


def test_main_crop_without_annotation_fails(tmp_path, caplog):
    source = tmp_path / "source"
    save_jpeg(source / "Images" / "n02110958-pug" / "n02110958_1.jpg")

    argv = [
        "--source_dir", str(source), "--download_dir", str(tmp_path / "downloads"),
        "--output", str(tmp_path / "out"), "--breeds", "pug", "--crop",
    ]
    assert prep.main(argv) == 1

    assert "Annotation" in caplog.text
    assert not (tmp_path / "out").exists()


def test_main_images_folder_without_lists(tmp_path, caplog):
    # --source_dir 直接指向含品种文件夹的目录，没有 lists：只准备图片，并提示缺少划分。
    source = tmp_path / "Images"
    save_jpeg(source / "n02110958-pug" / "n02110958_1.jpg")
    output = tmp_path / "out" / "dogs"

    argv = ["--source_dir", str(source), "--download_dir", str(tmp_path / "dl"), "--output", str(output), "--breeds", "pug"]
    with caplog.at_level("INFO", logger="prepare_dog_dataset"):
        assert prep.main(argv) == 0

    assert (output / "n02110958-pug" / "n02110958_1.jpg").is_file()
    assert not (tmp_path / "out" / "stanford-dogs-splits").exists()
    assert "train_list.mat" in caplog.text


def test_main_missing_source_dir(tmp_path, caplog):
    argv = ["--source_dir", str(tmp_path / "nowhere"), "--download_dir", str(tmp_path / "downloads"), "--output", str(tmp_path / "out")]
    assert prep.main(argv) == 1
    assert "nowhere" in caplog.text


def test_main_downloads_from_base_url(tmp_path, http_server, time_limit):
    extracted = tmp_path / "extracted"
    train, test = make_source_dir(extracted)
    archives = {}
    for archive_name, arcnames in (
        ("images.tar", ["Images"]),
        ("annotation.tar", ["Annotation"]),
        ("lists.tar", ["train_list.mat", "test_list.mat"]),
    ):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for arcname in arcnames:
                tar.add(extracted / arcname, arcname=arcname)
        archives[archive_name] = buffer.getvalue()

    class ArchiveHandler(BaseHTTPRequestHandler):
        requested_paths: list[str] = []

        def do_GET(self):
            type(self).requested_paths.append(self.path)
            data = archives.get(self.path.rsplit("/", 1)[-1])
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):
            pass

    base_url = http_server(ArchiveHandler) + "/ImageNetDogs/"
    downloads = tmp_path / "downloads"
    output = tmp_path / "data" / "stanford-dogs-10"
    argv = [
        "--base_url", base_url, "--download_dir", str(downloads), "--output", str(output),
        "--crop", "--size", "16", "--sha256", f"lists.tar={sha256_of(archives['lists.tar'])}",
    ]

    assert prep.main(argv) == 0

    assert sorted(ArchiveHandler.requested_paths) == [
        "/ImageNetDogs/annotation.tar", "/ImageNetDogs/images.tar", "/ImageNetDogs/lists.tar",
    ]
    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == sorted(DEFAULT_FOLDERS)
    assert len(output_images(output)) == 20
    splits_dir = tmp_path / "data" / "stanford-dogs-splits"
    assert (splits_dir / "test.txt").read_text(encoding="utf-8").splitlines() == sorted(test)
    assert (downloads / "images" / "Images").is_dir()
    assert not list(downloads.glob("*.part"))

    # 再运行一次：归档已解压在缓存里，不再发请求。
    assert prep.main(argv) == 0
    assert len(ArchiveHandler.requested_paths) == 3


def test_main_download_checksum_mismatch(tmp_path, http_server, payload, time_limit, caplog):
    base_url = http_server(make_handler(payload))
    downloads = tmp_path / "downloads"
    argv = [
        "--base_url", base_url, "--download_dir", str(downloads), "--output", str(tmp_path / "out"),
        "--retries", "0", "--sha256", "images.tar=" + "0" * 64,
    ]

    assert prep.main(argv) == 1

    assert "SHA-256" in caplog.text
    assert "images.tar" in caplog.text
    assert not (downloads / "images.tar").exists()
    assert not (downloads / "images.tar.part").exists()
