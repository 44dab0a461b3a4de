#!/usr/bin/env python3
"""Writes crates/epigrid-core/data/china_en.tsv: an English (Hanyu Pinyin) name for every city
and county in china.tsv, for the origin picker of a form read in English.

A development-time tool, run by hand when china.tsv changes (`pip install pypinyin==0.55.0`,
then `python3 tools/romanise-divisions.py` from the project root); the project never runs it.

Names follow the usual English style of Chinese place names: the place in pinyin, one word,
an apostrophe where a syllable starting with a, o or e would run into the one before (Xi'an,
Lu'an), then the kind in English (`临河区` → `Linhe District`, `五原县` → `Wuyuan County`,
`乌拉特前旗` → `Urad Front Banner` by the override below). A prefecture-level city is its
place name alone (`武汉市` → `Wuhan`). The ethnic groups of an autonomous prefecture or
county are left out (`恩施土家族苗族自治州` → `Enshi Autonomous Prefecture`), as is common.
Names with an established spelling that is not pinyin (mostly Mongolian, Uyghur and Tibetan
places: `Hohhot`, `Ordos`, `Urumqi`, `Lhasa`) come from OVERRIDES.
"""
import os
import re
import sys

from pypinyin import Style, lazy_pinyin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "crates/epigrid-core/data/china.tsv")
OUT = os.path.join(ROOT, "crates/epigrid-core/data/china_en.tsv")

# Whole names whose English form is not their pinyin (or whose pinyin pypinyin gets wrong).
OVERRIDES = {
    # Inner Mongolia: the cities, and the demo city's counties and banners
    "呼和浩特市": "Hohhot",
    "包头市": "Baotou",
    "鄂尔多斯市": "Ordos",
    "呼伦贝尔市": "Hulunbuir",
    "巴彦淖尔市": "Bayannur",
    "乌兰察布市": "Ulanqab",
    "兴安盟": "Hinggan League",
    "锡林郭勒盟": "Xilingol League",
    "阿拉善盟": "Alxa League",
    "乌拉特前旗": "Urad Front Banner",
    "乌拉特中旗": "Urad Middle Banner",
    "乌拉特后旗": "Urad Rear Banner",
    "杭锦后旗": "Hanggin Rear Banner",
    "磴口县": "Dengkou County",
    "临河区": "Linhe District",
    "五原县": "Wuyuan County",
    "二连浩特市": "Erenhot City",
    "满洲里市": "Manzhouli City",
    "额尔古纳市": "Ergun City",
    "阿尔山市": "Arxan City",
    "锡林浩特市": "Xilinhot City",
    "霍林郭勒市": "Holingol City",
    # Xinjiang, Tibet, Qinghai and a few more with established spellings
    "乌鲁木齐市": "Urumqi",
    "克拉玛依市": "Karamay",
    "吐鲁番市": "Turpan",
    "哈密市": "Hami",
    "喀什地区": "Kashgar Prefecture",
    "喀什市": "Kashgar City",
    "和田地区": "Hotan Prefecture",
    "和田市": "Hotan City",
    "阿克苏地区": "Aksu Prefecture",
    "阿克苏市": "Aksu City",
    "伊犁哈萨克自治州": "Ili Kazakh Autonomous Prefecture",
    "伊宁市": "Yining City",
    "阿勒泰地区": "Altay Prefecture",
    "塔城地区": "Tacheng Prefecture",
    "石河子市": "Shihezi City",
    "拉萨市": "Lhasa",
    "日喀则市": "Shigatse",
    "昌都市": "Qamdo",
    "林芝市": "Nyingchi",
    "山南市": "Shannan",
    "那曲市": "Nagqu",
    "阿里地区": "Ngari Prefecture",
    "西宁市": "Xining",
    "海东市": "Haidong",
    "格尔木市": "Golmud City",
    "德令哈市": "Delingha City",
    # pinyin that pypinyin reads wrongly (characters with several readings)
    "六安市": "Lu'an",
    "蚌埠市": "Bengbu",
    "乐山市": "Leshan",
    "乐清市": "Yueqing City",
    "番禺区": "Panyu District",
    "重庆市": "Chongqing",
    "长沙市": "Changsha",
    "长春市": "Changchun",
    "长治市": "Changzhi",
    "厦门市": "Xiamen",
    "丽水市": "Lishui",
    "丽江市": "Lijiang",
    "东阿县": "Dong'e County",
    "铅山县": "Yanshan County",
    "単县": "Shan County",
    "单县": "Shan County",
    "亳州市": "Bozhou",
    "大冶市": "Daye City",
    "涡阳县": "Guoyang County",
    "莘县": "Shen County",
    "洪洞县": "Hongtong County",
    "解放区": "Jiefang District",
    "浚县": "Xun County",
    "尉氏县": "Weishi County",
    "尉犁县": "Yuli County",
    "会昌县": "Huichang County",
    "会理市": "Huili City",
    "会同县": "Huitong County",
    "会宁县": "Huining County",
    "会泽县": "Huize County",
    "长汀县": "Changting County",
    "长兴县": "Changxing County",
    "长乐区": "Changle District",
    "长寿区": "Changshou District",
    "朝阳市": "Chaoyang",
    "朝阳区": "Chaoyang District",
    "朝阳县": "Chaoyang County",
    "阿城区": "Acheng District",
    "荥阳市": "Xingyang City",
    "黄陂区": "Huangpi District",
    "鄱阳县": "Poyang County",
    "台州市": "Taizhou",
    "天台县": "Tiantai County",
    "台江县": "Taijiang County",
    "台江区": "Taijiang District",
    "长子县": "Zhangzi County",
    "蔚县": "Yu County",
    "六合区": "Luhe District",
    "矿区": "Mining District",
    "哈尔滨市": "Harbin",
    "齐齐哈尔市": "Qiqihar",
    "大兴安岭地区": "Da Hinggan Ling Prefecture",
    "鄂温克族自治旗": "Evenki Autonomous Banner",
    "鄂伦春自治旗": "Oroqen Autonomous Banner",
    "莫力达瓦达斡尔族自治旗": "Morin Dawa Daur Autonomous Banner",
    "中沙群岛的岛礁及其海域": "Zhongsha Islands",
}

PROVINCES_EN = {
    "河北": "Hebei", "山西": "Shanxi", "内蒙古": "Inner Mongolia", "辽宁": "Liaoning",
    "吉林": "Jilin", "黑龙江": "Heilongjiang", "江苏": "Jiangsu", "浙江": "Zhejiang",
    "安徽": "Anhui", "福建": "Fujian", "江西": "Jiangxi", "山东": "Shandong", "河南": "Henan",
    "湖北": "Hubei", "湖南": "Hunan", "广东": "Guangdong", "广西": "Guangxi", "海南": "Hainan",
    "四川": "Sichuan", "贵州": "Guizhou", "云南": "Yunnan", "西藏": "Xizang", "陕西": "Shaanxi",
    "甘肃": "Gansu", "青海": "Qinghai", "宁夏": "Ningxia", "新疆": "Xinjiang",
}

# Kinds of development zones (county-level codes whose fifth digit is 7), longest first.
ZONES = [
    ("经济技术开发区", "Economic and Technological Development Zone"),
    ("高新技术产业开发区", "High-Tech Industrial Development Zone"),
    ("高技术产业开发区", "High-Tech Industrial Development Zone"),
    ("高新技术产业园区", "High-Tech Industrial Park"),
    ("高新技术开发区", "High-Tech Development Zone"),
    ("经济开发区", "Economic Development Zone"),
    ("开发区", "Development Zone"),
    ("工业园区", "Industrial Park"),
    ("产业园区", "Industrial Park"),
    ("园区", "Park"),
    ("管理区管委会", "Administrative Zone"),
    ("管理区", "Administrative Zone"),
    ("示范区", "Demonstration Zone"),
    ("实验区", "Experimental Zone"),
    ("风景名胜区", "Scenic Area"),
    ("行政委员会", "Administrative Committee"),
    ("新城", "New Town"),
]
# Kinds of every other division, longest first.
KINDS = [
    ("新区", "New Area"),
    ("矿区", "Mining District"),
    ("林区", "Forestry District"),
    ("特区", "Special District"),
    ("自治州", "Autonomous Prefecture"),
    ("自治县", "Autonomous County"),
    ("自治旗", "Autonomous Banner"),
    ("左翼前旗", "Left Wing Front Banner"),
    ("左翼中旗", "Left Wing Middle Banner"),
    ("左翼后旗", "Left Wing Rear Banner"),
    ("右翼前旗", "Right Wing Front Banner"),
    ("右翼中旗", "Right Wing Middle Banner"),
    ("右翼后旗", "Right Wing Rear Banner"),
    ("联合旗", "United Banner"),
    ("左旗", "Left Banner"),
    ("右旗", "Right Banner"),
    ("前旗", "Front Banner"),
    ("中旗", "Middle Banner"),
    ("后旗", "Rear Banner"),
    ("地区", "Prefecture"),
    ("市", None),  # a prefecture-level city is its name alone; a county-level one "City"
    ("区", "District"),
    ("县", "County"),
    ("旗", "Banner"),
    ("盟", "League"),
]
# The peoples an autonomous area is named for, left out of its English name.
PEOPLES = sorted(
    "蒙古 回 藏 维吾尔 苗 彝 壮 布依 朝鲜 满 侗 瑶 白 土家 哈尼 哈萨克 傣 黎 傈僳 佤 畲 高山 "
    "拉祜 水 东乡 纳西 景颇 柯尔克孜 土 达斡尔 仫佬 羌 布朗 撒拉 毛南 仡佬 锡伯 阿昌 普米 "
    "塔吉克 怒 乌孜别克 俄罗斯 鄂温克 德昂 保安 裕固 京 塔塔尔 独龙 鄂伦春 赫哲 门巴 珞巴 "
    "基诺 各".split(),
    key=len,
    reverse=True,
)


# How a character with several readings is read in place names (长春, 都匀, 漯河).
PLACE_READINGS = {"长": "chang", "都": "du", "漯": "luo"}


def pinyin_word(han):
    syllables = lazy_pinyin(han, style=Style.NORMAL, v_to_u=True, errors="ignore")
    if len(syllables) == len(han):
        syllables = [PLACE_READINGS.get(ch, s) for ch, s in zip(han, syllables)]
    out = ""
    for i, s in enumerate(syllables):
        if i and s[:1] in "aoe":
            out += "'"
        out += s
    return out[:1].upper() + out[1:]


def without_peoples(base):
    """`恩施土家族苗族` → `恩施`, `伊犁哈萨克` → `伊犁`; never to nothing (`东乡族` → `东乡`)."""
    changed = True
    while changed:
        changed = False
        for p in PEOPLES:
            for tail in (p + "族", p):
                if base.endswith(tail) and len(base) > len(tail) + 1:
                    base = base[: -len(tail)]
                    changed = True
                    break
            if changed:
                break
    return base.removesuffix("族") if len(base) > 2 else base


def words(base, city, city_en):
    """A place name in pinyin words: a leading province and city name are words of their own,
    in English (`河北唐山芦台` → `Hebei Tangshan Lutai`, `呼和浩特` → `Hohhot`)."""
    parts = []
    for zh, en in PROVINCES_EN.items():
        if base.startswith(zh) and len(base) > len(zh) + 1:
            parts.append(en)
            base = base[len(zh):]
            break
    if city and city_en:
        c = city
        for kind in ("自治州", "地区", "市", "盟"):
            c = c.removesuffix(kind)
        place = city_en
        for kind in (" Autonomous Prefecture", " Prefecture", " League"):
            place = place.removesuffix(kind)
        for prefix in (city, c):
            if base == prefix:
                return " ".join(parts + [place])
            if base.startswith(prefix) and len(base) > len(prefix) + 1:
                parts.append(place)
                base = base[len(prefix):]
                break
    parts += [pinyin_word(p) for p in base.split("市") if p]
    return " ".join(parts)


def romanise(code, name, city, city_en):
    if name in OVERRIDES:
        return OVERRIDES[name]
    zone = len(code) == 6 and code[4] == "7"
    for zh, word in (ZONES if zone else []) + KINDS:
        if name.endswith(zh) and len(name) > len(zh):
            base = name[: -len(zh)]
            if word is None:
                word = "" if len(code) == 4 else "City"
            if zh.startswith("自治") or (zh == "区" and base.endswith("族")):
                base = without_peoples(base)
            return f"{words(base, city, city_en)} {word}".strip()
    return words(name, city, city_en)


def main():
    rows, names, english = [], {}, {}
    with open(SRC, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            code, name, _parent = line.rstrip("\n").split("\t")
            names[code] = name
            if len(code) == 2:
                continue  # provinces: divisions::province_name_en
            if name in ("市辖区", "县") or name.endswith("直辖县级行政区划"):
                continue  # placeholders show as their province
            city = names.get(code[:4]) if len(code) == 6 else None
            en = romanise(code, name, city, english.get(code[:4]))
            english[code] = en
            rows.append((code, en))
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("# code\tEnglish name -- cities and counties of china.tsv in Hanyu Pinyin; "
                "generated by tools/romanise-divisions.py\n")
        for code, en in rows:
            f.write(f"{code}\t{en}\n")
    print(f"wrote {len(rows)} names to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
