"""The Lesion segment's terminology entry names codes that Slicer's DICOM master lists contain.

``Testing/data/terminology/`` keeps excerpts of the two lists Slicer ships (see its README for the
source and licence). A code missing from them would show as an unknown type in Slicer's terminology
selector and would not match other software's codes in a DICOM SEG export.
"""

import json
from pathlib import Path

import pytest
import slicer_module  # noqa: F401  (puts the module's folder, with BreastUSSegmentScene, on sys.path)

import slicer
from BreastUSSegmentScene import common

DATA = Path(__file__).resolve().parent / "data" / "terminology"
CATEGORY_TYPE_FILE = DATA / "SegmentationCategoryTypeModifier-DICOM-Master.excerpt.json"
ANATOMY_FILE = DATA / "AnatomicRegionAndModifier-DICOM-Master.excerpt.json"


def entry_parts(entry):
    """The seven ``~``-separated parts; the coded ones as (scheme, value, meaning) triples."""
    parts = entry.split("~")
    assert len(parts) == 7, f"terminology entry has {len(parts)} parts, not 7: {entry}"
    context, category, type_, modifier, anatomic_context, region, region_modifier = parts
    coded = [tuple(part.split("^")) for part in (category, type_, modifier, region, region_modifier)]
    assert all(len(code) == 3 for code in coded), f"a coded part is not scheme^value^meaning: {entry}"
    return context, coded[0], coded[1], coded[2], anatomic_context, coded[3], coded[4]


def find_code(items, code):
    """The item of a terminology list with this (scheme, value, meaning), or None."""
    for item in items:
        if (item["CodingSchemeDesignator"], item["CodeValue"], item["CodeMeaning"]) == code:
            return item
    return None


@pytest.fixture(scope="module")
def lists():
    return json.loads(CATEGORY_TYPE_FILE.read_text()), json.loads(ANATOMY_FILE.read_text())


def test_category_type_and_region_are_listed(lists):
    categories, anatomy = lists
    context, category, type_, modifier, anatomic_context, region, region_modifier = entry_parts(common.LESION_TERMINOLOGY_ENTRY)

    assert context == categories["SegmentationCategoryTypeContextName"]
    found_category = find_code(categories["SegmentationCodes"]["Category"], category)
    assert found_category is not None, f"category {category} is not in {CATEGORY_TYPE_FILE.name}"
    found_type = find_code(found_category["Type"], type_)
    assert found_type is not None, f"type {type_} is not listed under category {category[2]}"
    assert modifier == ("", "", "") or find_code(found_type.get("Modifier", []), modifier) is not None

    assert found_category["showAnatomy"] is True  # the category allows an anatomic region
    assert anatomic_context == anatomy["AnatomicContextName"]
    found_region = find_code(anatomy["AnatomicCodes"]["AnatomicRegion"], region)
    assert found_region is not None, f"region {region} is not in {ANATOMY_FILE.name}"
    assert region_modifier == ("", "", "") or find_code(found_region.get("Modifier", []), region_modifier) is not None

    # The segment's colour is the colour Slicer recommends for the type.
    assert tuple(round(c * 255) for c in common.LESION_SEGMENT_COLOR) == tuple(found_type["recommendedDisplayRGBValue"])


def test_the_former_lesion_code_is_not_listed(lists):
    """SCT^52988006^Lesion, used before, is not a type of Morphologically Altered Structure."""
    categories, _ = lists
    [category] = categories["SegmentationCodes"]["Category"]
    assert find_code(category["Type"], ("SCT", "52988006", "Lesion")) is None
    assert find_code(category["Type"], ("SCT", "4147007", "Mass")) is not None


def test_slicer_terminology_logic_reads_the_entry(lists):
    """Slicer's own terminology logic parses the entry, writes it back unchanged and finds the type's colour."""
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(CATEGORY_TYPE_FILE)) == lists[0]["SegmentationCategoryTypeContextName"]
    assert logic.LoadRegionContextFromFile(str(ANATOMY_FILE)) == lists[1]["AnatomicContextName"]
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(common.LESION_TERMINOLOGY_ENTRY, entry)
    assert logic.SerializeTerminologyEntry(entry) == common.LESION_TERMINOLOGY_ENTRY
    assert logic.UpdateEntryFromLoadedTerminologies(entry, [], [])
    expected = tuple(round(c * 255) for c in common.LESION_SEGMENT_COLOR)
    assert tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) == expected
    assert entry.GetTypeObject().GetCodeMeaning() == "Mass"
