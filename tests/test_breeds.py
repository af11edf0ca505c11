"""visionft.breeds 的测试：品种键、英文名、中文名和显示名。"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
try:
    from visionft import breeds
except ImportError:
    # 包还没有安装时，直接从仓库里的 code/ 导入。
    sys.path.insert(0, str(REPO_ROOT / "code"))
    from visionft import breeds

STANFORD_DOGS_120_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stanford-dogs-120-mini"


def test_all_120_folders_have_chinese_name():
    if not STANFORD_DOGS_120_DIR.is_dir():
        pytest.skip(f"没有 {STANFORD_DOGS_120_DIR}，无法对照 120 个品种文件夹")
    folders = sorted(path.name for path in STANFORD_DOGS_120_DIR.iterdir() if path.is_dir())

    assert len(folders) == 120
    missing = [folder for folder in folders if breeds.chinese_name(folder) is None]
    assert missing == []
    assert {breeds.breed_key(folder) for folder in folders} == set(breeds.STANFORD_DOGS_ZH)


def test_chinese_names_unique_and_chinese():
    names = list(breeds.STANFORD_DOGS_ZH.values())

    assert len(breeds.STANFORD_DOGS_ZH) == 120
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[\u4e00-\u9fff\u3400-\u4dbf]+", name), name


@pytest.mark.parametrize(
    ("folder", "key"),
    [
        ("n02099601-golden_retriever", "golden_retriever"),
        ("n02086240-Shih-Tzu", "Shih-Tzu"),
        ("n02089078-black-and-tan_coonhound", "black-and-tan_coonhound"),
        ("golden_retriever", "golden_retriever"),
        ("my-dog", "my-dog"),
        ("n0209-short_id", "n0209-short_id"),
    ],
)
def test_breed_key_strips_wordnet_id(folder, key):
    assert breeds.breed_key(folder) == key


@pytest.mark.parametrize(
    ("folder", "english"),
    [
        ("n02099601-golden_retriever", "Golden Retriever"),
        ("n02106662-German_shepherd", "German Shepherd"),
        ("n02086240-Shih-Tzu", "Shih-Tzu"),
        ("n02113624-toy_poodle", "Toy Poodle"),
        ("n02089078-black-and-tan_coonhound", "Black-and-tan Coonhound"),
        ("n02108000-EntleBucher", "EntleBucher"),
        ("cat", "Cat"),
        ("我的狗", "我的狗"),
    ],
)
def test_english_name_readable(folder, english):
    assert breeds.english_name(folder) == english


def test_chinese_name_round_trips():
    for folder, chinese in (
        ("n02099601-golden_retriever", "金毛寻回犬"),
        ("n02099712-Labrador_retriever", "拉布拉多寻回犬"),
        ("n02106166-Border_collie", "边境牧羊犬"),
        ("n02106662-German_shepherd", "德国牧羊犬"),
        ("n02086240-Shih-Tzu", "西施犬"),
    ):
        assert breeds.chinese_name(folder) == chinese
        assert breeds.chinese_name(breeds.breed_key(folder)) == chinese
        assert breeds.chinese_name(breeds.english_name(folder)) == chinese


def test_collie_not_confused_with_border_collie():
    assert breeds.chinese_name("n02106030-collie") == "柯利牧羊犬"
    assert breeds.chinese_name("n02106166-Border_collie") == "边境牧羊犬"


def test_display_name_languages():
    assert breeds.display_name("n02110185-Siberian_husky") == breeds.STANFORD_DOGS_ZH["Siberian_husky"]
    assert breeds.display_name("n02110185-Siberian_husky", language="en") == "Siberian Husky"


@pytest.mark.parametrize(("folder", "expected"), [("我的狗", "我的狗"), ("cat", "Cat"), ("my_dog", "My Dog")])
def test_display_name_unknown_folder(folder, expected):
    assert breeds.chinese_name(folder) is None
    assert breeds.display_name(folder) == expected
    assert breeds.display_name(folder, language="en") == expected


def test_display_name_rejects_language():
    with pytest.raises(ValueError) as excinfo:
        breeds.display_name("n02110958-pug", language="fr")

    assert "'fr'" in str(excinfo.value)
