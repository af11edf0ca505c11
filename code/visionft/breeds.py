"""Stanford Dogs 品种名：文件夹名 → 品种键、英文名和中文名。

Stanford Dogs 的文件夹名是 WordNet synset id、一个短横线和品种名，例如
`n02099601-golden_retriever`。本模块把去掉 id 之后的部分（`golden_retriever`）叫作品种键。
其他来源的文件夹名（例如学习者自己的 `我的狗`）也能用，只是没有中文名。
本模块不依赖 torch。
"""

from __future__ import annotations

import re

# 120 个品种的中文名。优先用国内常见的叫法，同名易混的品种（两种柯基、三种贵宾）保留区分词。
STANFORD_DOGS_ZH: dict[str, str] = {
    "Chihuahua": "吉娃娃",
    "Japanese_spaniel": "日本狆",
    "Maltese_dog": "马尔济斯犬",
    "Pekinese": "北京犬",
    "Shih-Tzu": "西施犬",
    "Blenheim_spaniel": "骑士查理王小猎犬",
    "papillon": "蝴蝶犬",
    "toy_terrier": "英国玩具梗",
    "Rhodesian_ridgeback": "罗得西亚脊背犬",
    "Afghan_hound": "阿富汗猎犬",
    "basset": "巴吉度猎犬",
    "beagle": "比格犬",
    "bloodhound": "寻血猎犬",
    "bluetick": "蓝斑猎浣熊犬",
    "black-and-tan_coonhound": "黑褐猎浣熊犬",
    "Walker_hound": "沃克猎浣熊犬",
    "English_foxhound": "英国猎狐犬",
    "redbone": "红骨猎浣熊犬",
    "borzoi": "苏俄猎狼犬",
    "Irish_wolfhound": "爱尔兰猎狼犬",
    "Italian_greyhound": "意大利灵缇",
    "whippet": "惠比特犬",
    "Ibizan_hound": "伊比赞猎犬",
    "Norwegian_elkhound": "挪威猎鹿犬",
    "otterhound": "猎獭犬",
    "Saluki": "萨路基猎犬",
    "Scottish_deerhound": "苏格兰猎鹿犬",
    "Weimaraner": "威玛猎犬",
    "Staffordshire_bullterrier": "斯塔福郡斗牛梗",
    "American_Staffordshire_terrier": "美国斯塔福郡梗",
    "Bedlington_terrier": "贝灵顿梗",
    "Border_terrier": "边境梗",
    "Kerry_blue_terrier": "凯利蓝梗",
    "Irish_terrier": "爱尔兰梗",
    "Norfolk_terrier": "诺福克梗",
    "Norwich_terrier": "罗威士梗",
    "Yorkshire_terrier": "约克夏梗",
    "wire-haired_fox_terrier": "刚毛猎狐梗",
    "Lakeland_terrier": "湖畔梗",
    "Sealyham_terrier": "西里汉梗",
    "Airedale": "万能梗",
    "cairn": "凯恩梗",
    "Australian_terrier": "澳大利亚梗",
    "Dandie_Dinmont": "丹迪丁蒙梗",
    "Boston_bull": "波士顿梗",
    "miniature_schnauzer": "迷你雪纳瑞",
    "giant_schnauzer": "巨型雪纳瑞",
    "standard_schnauzer": "标准雪纳瑞",
    "Scotch_terrier": "苏格兰梗",
    "Tibetan_terrier": "西藏梗",
    "silky_terrier": "澳大利亚丝毛梗",
    "soft-coated_wheaten_terrier": "爱尔兰软毛梗",
    "West_Highland_white_terrier": "西高地白梗",
    "Lhasa": "拉萨犬",
    "flat-coated_retriever": "平毛寻回犬",
    "curly-coated_retriever": "卷毛寻回犬",
    "golden_retriever": "金毛寻回犬",
    "Labrador_retriever": "拉布拉多寻回犬",
    "Chesapeake_Bay_retriever": "切萨皮克湾寻回犬",
    "German_short-haired_pointer": "德国短毛指示犬",
    "vizsla": "维兹拉犬",
    "English_setter": "英国雪达犬",
    "Irish_setter": "爱尔兰雪达犬",
    "Gordon_setter": "戈登雪达犬",
    "Brittany_spaniel": "布列塔尼犬",
    "clumber": "克伦伯猎犬",
    "English_springer": "英国史宾格犬",
    "Welsh_springer_spaniel": "威尔士史宾格犬",
    "cocker_spaniel": "可卡犬",
    "Sussex_spaniel": "苏塞克斯猎犬",
    "Irish_water_spaniel": "爱尔兰水猎犬",
    "kuvasz": "库瓦兹犬",
    "schipperke": "史奇派克犬",
    "groenendael": "格罗安达犬",
    "malinois": "马林诺斯犬",
    "briard": "伯瑞犬",
    "kelpie": "澳大利亚卡尔比犬",
    "komondor": "可蒙犬",
    "Old_English_sheepdog": "古代英国牧羊犬",
    "Shetland_sheepdog": "喜乐蒂牧羊犬",
    "collie": "柯利牧羊犬",
    "Border_collie": "边境牧羊犬",
    "Bouvier_des_Flandres": "法兰德斯畜牧犬",
    "Rottweiler": "罗威纳犬",
    "German_shepherd": "德国牧羊犬",
    "Doberman": "杜宾犬",
    "miniature_pinscher": "迷你品犬",
    "Greater_Swiss_Mountain_dog": "大瑞士山地犬",
    "Bernese_mountain_dog": "伯恩山犬",
    "Appenzeller": "阿彭策尔山犬",
    "EntleBucher": "恩特雷布赫山犬",
    "boxer": "拳师犬",
    "bull_mastiff": "斗牛獒",
    "Tibetan_mastiff": "藏獒",
    "French_bulldog": "法国斗牛犬",
    "Great_Dane": "大丹犬",
    "Saint_Bernard": "圣伯纳犬",
    "Eskimo_dog": "爱斯基摩犬",
    "malamute": "阿拉斯加雪橇犬",
    "Siberian_husky": "哈士奇",
    "affenpinscher": "艾芬品犬",
    "basenji": "巴仙吉犬",
    "pug": "巴哥犬",
    "Leonberg": "莱昂贝格犬",
    "Newfoundland": "纽芬兰犬",
    "Great_Pyrenees": "大白熊犬",
    "Samoyed": "萨摩耶犬",
    "Pomeranian": "博美犬",
    "chow": "松狮犬",
    "keeshond": "荷兰毛狮犬",
    "Brabancon_griffon": "布拉班松格里芬犬",
    "Pembroke": "彭布罗克柯基犬",
    "Cardigan": "卡迪根柯基犬",
    "toy_poodle": "玩具贵宾犬",
    "miniature_poodle": "迷你贵宾犬",
    "standard_poodle": "标准贵宾犬",
    "Mexican_hairless": "墨西哥无毛犬",
    "dingo": "澳洲野犬",
    "dhole": "豺",
    "African_hunting_dog": "非洲野犬",
}

_SYNSET_PREFIX = re.compile(r"^n\d{8}-")


def _lookup_key(name: str) -> str:
    return name.strip().replace(" ", "_").lower()


# 查中文名时不区分大小写，空格等同下划线，所以英文名（`Golden Retriever`）也能查到。
_ZH_BY_LOOKUP_KEY = {_lookup_key(key): name for key, name in STANFORD_DOGS_ZH.items()}


def breed_key(folder_name: str) -> str:
    """去掉文件夹名开头的 WordNet id（`n02099601-`），其他名字原样返回。"""
    return _SYNSET_PREFIX.sub("", folder_name, count=1)


def english_name(folder_name: str) -> str:
    """把文件夹名转成可读的英文名：下划线换成空格，每个词的首字母大写。

    只改首字母，词中其他字母和连字符保持原样，例如 `toy_poodle` → `Toy Poodle`，
    `Shih-Tzu` → `Shih-Tzu`，`black-and-tan_coonhound` → `Black-and-tan Coonhound`。
    """
    words = breed_key(folder_name).replace("_", " ").split()
    return " ".join(word[:1].upper() + word[1:] for word in words)


def chinese_name(folder_name: str) -> str | None:
    """返回 Stanford Dogs 品种的中文名，不是这 120 个品种之一时返回 None。

    接受文件夹名、品种键或英文名，不区分大小写。
    """
    return _ZH_BY_LOOKUP_KEY.get(_lookup_key(breed_key(folder_name)))


def display_name(folder_name: str, language: str = "zh") -> str:
    """返回用于图表和预测结果的品种名。

    language 为 "zh" 时返回中文名，没有中文名时退回英文名。language 为 "en" 时返回英文名。
    其他值抛出 ValueError。
    """
    if language == "en":
        return english_name(folder_name)
    if language == "zh":
        return chinese_name(folder_name) or english_name(folder_name)
    raise ValueError(f"language 的值 {language!r} 无效：只支持 \"zh\"（中文）或 \"en\"（英文）。")
