"""The measurement sidecar of a segmented input (JSON) and the run's table of every input (CSV).

The JSON file holds, for one input: the input's path and sha256, the pixel spacing and where it came
from, the units, the provenance (software version, model file and sha256, every post-processing
setting, device and precision), each frame's result in words and one row per lesion (the columns of
:data:`LESION_ROW_COLUMNS`: the measurements, then the research-use descriptors and likelihood, with
:data:`.descriptors.DESCRIPTOR_NOTE`). The CSV table has one row per input, frame and lesion (a frame
without a lesion gets one row with an empty lesion number). See README.md, "Measurement sidecar".
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional

from . import __version__
from .descriptors import DESCRIPTOR_COLUMNS, DESCRIPTOR_NOTE
from .fileio import sha256_of_file, write_atomically
from .likelihood import MODEL_PATH as LIKELIHOOD_MODEL_PATH
from .measure import LESION_COLUMNS, column_unit

SIDECAR_FORMAT = "breastus-measurements"
SIDECAR_FORMAT_VERSION = 1
SIDECAR_SUFFIX = "_measurements.json"
RUN_TABLE_NAME = "measurements.csv"
SOFTWARE_NAME = "SlicerBreastUS"
NIFTI_DESCRIPTION_LENGTH = 79  # the NIfTI header's descrip field holds 80 bytes, the last a zero
# Where a pixel spacing came from, as the sidecar names it.
SPACING_SOURCES = ("header", "DICOM", "user", "default")
# A lesion's row: its measurements, then its descriptors and likelihood (sidecar, run table, Slicer table).
LESION_ROW_COLUMNS = LESION_COLUMNS + DESCRIPTOR_COLUMNS
TABLE_COLUMNS = ("file", *(column.name for column in LESION_ROW_COLUMNS), "length_unit", "spacing_row_mm",
                 "spacing_col_mm", "spacing_source", "result", "descriptors_note")


def spacing_source(loaded_source: str, user: bool = False) -> str:
    """The sidecar's name for where the spacing came from: "user" (given on the command line), "header"
    (NRRD, NIfTI, MetaImage), "DICOM <attribute>" or "default" (unknown: 1 x 1, lengths in pixels)."""
    if user:
        return "user"
    if loaded_source == "unknown":
        return "default"
    if loaded_source == "header":
        return "header"
    return f"DICOM {loaded_source}"


def units(calibrated: bool) -> dict:
    """The unit of every lesion column that has one ("mm" reads "px" when the spacing is the default)."""
    return {column.name: column_unit(column, calibrated) for column in LESION_ROW_COLUMNS if column.unit}


def provenance(weights_path, card, postprocessing: dict, device: str, precision: str, backend: str = "torch") -> dict:
    """Where a result came from: software, model file and sha256 (verified on loading), settings, device, precision,
    the backend that ran the network (:mod:`.runtime`) and the malignancy likelihood's model file and sha256."""
    return {
        "software": {"name": SOFTWARE_NAME, "version": __version__},
        "model": {"file": Path(weights_path).name, "sha256": card.sha256, "name": card.name},
        "settings": dict(postprocessing),
        "device": device,
        "precision": precision,
        "backend": backend,
        "likelihood_model": {"file": LIKELIHOOD_MODEL_PATH.name, "sha256": sha256_of_file(LIKELIHOOD_MODEL_PATH)},
    }


def segmenter_provenance(segmenter, settings: dict, weights_path=None) -> dict:
    """:func:`provenance` of a run of ``segmenter`` (a ``LesionSegmenter``) with ``settings``: its weights file
    (``weights_path`` where it has none), device, backend, and precision in words (bfloat16 or float32)."""
    precision = "bfloat16" if getattr(segmenter, "cpu_bf16", False) else "float32"
    return provenance(segmenter.weights_path or weights_path, segmenter.card, settings, str(segmenter.device),
                      precision, segmenter.provenance["backend"])


def header_fields(record: dict) -> dict:
    """Short provenance for an image header (NRRD key/value pairs), all strings."""
    source = record["provenance"]
    return {
        "BreastUS_software": f"{source['software']['name']} {source['software']['version']}",
        "BreastUS_model": source["model"]["file"],
        "BreastUS_model_sha256": source["model"]["sha256"],
        "BreastUS_settings": json.dumps(source["settings"], sort_keys=True),
        "BreastUS_device": f"{source['device']} {source['precision']}",
        "BreastUS_backend": source.get("backend", "torch"),
        "BreastUS_input_sha256": record["input"]["sha256"],
        # NIfTI keeps only this one, as its 80-byte "descrip" field
        "ITK_FileNotes": f"{source['software']['name']} {source['software']['version']}; model sha256 "
                         f"{source['model']['sha256']}"[:NIFTI_DESCRIPTION_LENGTH],
    }


def sidecar_record(
    *, input_path, input_sha256: str, frame_shape, spacing, source: str, frames: list, descriptors: list,
    boxes: Optional[list], provenance_block: dict, outputs: dict,
) -> dict:
    """The JSON object of one input.

    ``frames`` holds one ``(lesions, result_in_words)`` pair per frame (lesions: :class:`.measure.Lesion`),
    ``descriptors`` one list per frame of its lesions' descriptor dicts (:func:`.descriptors.describe_frames`);
    ``boxes`` the box prompts as ``(x0, y0, x1, y1)`` (None: automatic); ``outputs`` kind -> file name.
    """
    if source not in SPACING_SOURCES and not source.startswith("DICOM "):
        raise ValueError(f"unknown spacing source {source!r}")
    calibrated = source != "default"
    if [len(lesions) for lesions, _words in frames] != [len(rows) for rows in descriptors]:
        raise ValueError("every lesion needs its descriptors: the frames' lesions and descriptors do not match")
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "input": {"path": str(Path(input_path).resolve()), "sha256": input_sha256, "frames": len(frames),
                  "rows": int(frame_shape[0]), "columns": int(frame_shape[1])},
        "spacing": {"row_mm": float(spacing[0]), "col_mm": float(spacing[1]), "source": source},
        "units": units(calibrated),
        "provenance": provenance_block,
        "boxes": None if boxes is None else [
            {"box": number, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}
            for number, box in enumerate(boxes, start=1)],
        "frames": [{"frame": number, "lesions": len(lesions), "result": words}
                   for number, (lesions, words) in enumerate(frames, start=1)],
        "lesions": [{**lesion.row(), **described} for (lesions, _words), rows in zip(frames, descriptors)
                    for lesion, described in zip(lesions, rows)],
        "descriptors_note": DESCRIPTOR_NOTE,
        "outputs": dict(outputs),
    }


def sidecar_json(record: dict) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


def write_sidecar(path: str | os.PathLike, record: dict, exclusive: bool = False) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (never replacing a file with ``exclusive``)."""
    text = sidecar_json(record)
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"),
                            exclusive=exclusive)


def table_rows(record: dict, file: str) -> list:
    """The run table's rows of one input: one per lesion, and one for each frame without a lesion."""
    spacing = record["spacing"]
    common = {"length_unit": "mm" if spacing["source"] != "default" else "px", "spacing_row_mm": spacing["row_mm"],
              "spacing_col_mm": spacing["col_mm"], "spacing_source": spacing["source"]}
    rows = []
    for frame in record["frames"]:
        lesions = [row for row in record["lesions"] if row["frame"] == frame["frame"]]
        for lesion in lesions or [{"frame": frame["frame"]}]:
            rows.append({"file": file, **{column.name: lesion.get(column.name) for column in LESION_ROW_COLUMNS},
                         **common, "result": frame["result"],
                         "descriptors_note": record["descriptors_note"] if lesions else None})
    return rows


def table_csv(rows: list) -> str:
    """The run table as CSV text (empty cells for None)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "" if row.get(name) is None else _cell(row[name]) for name in TABLE_COLUMNS})
    return buffer.getvalue()


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def write_table(path: str | os.PathLike, rows: list) -> Path:
    """Write the run table atomically (replacing this run's earlier version)."""
    text = table_csv(rows)
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8",
                                                                               errors="backslashreplace"))
