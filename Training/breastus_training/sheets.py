"""Read a table (a clinical sheet) as rows of text: CSV, or the first worksheet of an Excel ``.xlsx`` file.

The ``.xlsx`` reader needs only the standard library: an ``.xlsx`` file is a zip archive of XML parts
(``xl/workbook.xml`` names the sheets, ``xl/_rels/workbook.xml.rels`` says which part holds each,
``xl/sharedStrings.xml`` holds the text cells). Cells are returned as the text stored in the file:
numbers as written there (``7.8125E-3``), dates as their serial numbers, formulas as their cached value.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

from .datasets import DatasetError

RELATIONSHIP_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
STRICT_RELATIONSHIP_ID = "{http://purl.oclc.org/ooxml/officeDocument/relationships}id"


def read_table(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``.csv`` file or of the first sheet of an ``.xlsx`` file, keyed by the header row."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"sheet not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as stream:
                return [{key: (value or "").strip() for key, value in row.items() if key is not None}
                        for row in csv.DictReader(stream)]
        except (OSError, csv.Error, UnicodeDecodeError) as error:
            raise DatasetError(f"cannot read {path}: {error}") from error
    if suffix == ".xlsx":
        try:
            rows = read_xlsx_rows(path)
        except (OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile, ElementTree.ParseError) as error:
            raise DatasetError(f"cannot read {path} as an Excel .xlsx workbook: {error}") from error
        return rows_to_records(rows, path)
    raise DatasetError(f"{path}: a sheet must be .xlsx or .csv (an older .xls workbook: save it as .xlsx or .csv)")


def rows_to_records(rows: list[list[str]], path: Path) -> list[dict[str, str]]:
    """Records keyed by the first non-empty row; fully empty rows are skipped."""
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{path}: the first sheet is empty")
    header = [cell.strip() for cell in rows[0]]
    return [{name: (row[index].strip() if index < len(row) else "") for index, name in enumerate(header) if name}
            for row in rows[1:]]


def _local(tag: str) -> str:
    """An XML tag without its namespace (transitional and strict workbooks use different ones)."""
    return tag.rsplit("}", 1)[-1]


def _children(element, name: str) -> list:
    return [child for child in element if _local(child.tag) == name]


def _text_of(element) -> str:
    """The text of a string item or an inline string: its ``t``, or its rich-text runs' ``t`` (no phonetic runs)."""
    parts = []
    for child in element:
        if _local(child.tag) == "t":
            parts.append(child.text or "")
        elif _local(child.tag) == "r":
            parts.extend(t.text or "" for t in _children(child, "t"))
    return "".join(parts)


def _column_index(reference: str) -> int:
    """0-based column of a cell reference such as ``AB12``."""
    letters = re.match(r"[A-Za-z]+", reference)
    if not letters:
        raise ValueError(f"bad cell reference {reference!r}")
    index = 0
    for letter in letters.group(0).upper():
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def _first_sheet_part(archive: zipfile.ZipFile) -> str:
    """The archive path of the workbook's first worksheet."""
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    sheets = [sheet for element in workbook if _local(element.tag) == "sheets" for sheet in element]
    if not sheets:
        raise ValueError("the workbook lists no sheet")
    relation = sheets[0].get(RELATIONSHIP_ID) or sheets[0].get(STRICT_RELATIONSHIP_ID)
    relations = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    for element in relations:
        if element.get("Id") == relation:
            target = element.get("Target", "")
            if target.startswith("/"):
                return target.lstrip("/")
            return str(PurePosixPath("xl") / target)
    raise ValueError(f"the first sheet's part ({relation}) is not in xl/_rels/workbook.xml.rels")


def read_xlsx_rows(path: Path) -> list[list[str]]:
    """Every row of the first worksheet as a list of cell texts (missing cells are empty strings)."""
    with zipfile.ZipFile(path) as archive:
        shared = []
        if "xl/sharedStrings.xml" in archive.namelist():
            strings = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
            shared = [_text_of(item) for item in strings if _local(item.tag) == "si"]
        sheet = ElementTree.fromstring(archive.read(_first_sheet_part(archive)))
    data = next((element for element in sheet if _local(element.tag) == "sheetData"), None)
    rows = []
    for row in ([] if data is None else _children(data, "row")):
        cells: dict[int, str] = {}
        column = -1
        for cell in _children(row, "c"):
            column = _column_index(cell.get("r")) if cell.get("r") else column + 1
            kind = cell.get("t", "n")
            if kind == "inlineStr":
                inline = _children(cell, "is")
                cells[column] = _text_of(inline[0]) if inline else ""
                continue
            value = next((child.text or "" for child in cell if _local(child.tag) == "v"), "")
            cells[column] = shared[int(value)] if kind == "s" and value else value
        rows.append([cells.get(index, "") for index in range(max(cells) + 1)] if cells else [])
    return rows
