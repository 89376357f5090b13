"""The status lines the panel shows after a run or a measurement: the lesions and their sizes, or why none is shown."""

from typing import List, Tuple

from BreastUSSegmentLib.measure import Lesion, LesionMeasurement

from .common import _


def measurementSummary(
    measurements: List[LesionMeasurement], spacing=(1.0, 1.0), hiddenConfidence=None, minConfidence=None,
    rejectedLesionProbability=None, minLesionProbability=None,
) -> str:
    """One line for the status label: the number of lesions and the largest one's size (for a clip: in its
    frame, with the number of frames holding a lesion). Every length is one lesion's own.

    When nothing was found because the lesion head judged every frame below ``minLesionProbability``
    (``rejectedLesionProbability``, its highest probability), or Min. confidence hid a candidate region
    (``hiddenConfidence``, its mean probability, below ``minConfidence``), say so and how to show it.
    """
    if not any(m.lesions for m in measurements):
        reasons = (  # the first that applies: the lesion head's verdict, then Min. confidence
            (rejectedLesionProbability, minLesionProbability, _(
                "No lesion shown: the highest image-level lesion probability the model gave is {found:.2f}, below "
                "Min. lesion probability {bar:.2f}. Lower Min. lesion probability under Advanced to show "
                "what it found, or draw the lesion in Segment Editor.")),
            (hiddenConfidence, minConfidence, _(
                "No lesion shown: the strongest candidate region has mean probability {found:.2f}, below "
                "Min. confidence {bar:.2f}. Lower Min. confidence under Advanced to show it, "
                "or draw the lesion in Segment Editor.")),
        )
        for found, bar, text in reasons:
            if found is not None and bar is not None:
                return text.format(found=found, bar=bar)
        return _(
            "No lesion found. Lower the threshold or Min. confidence under Advanced, "
            "or draw the lesion in Segment Editor."
        )
    frame, largest = largestLesion(measurements)
    if len(measurements) == 1:
        text = lesionsText(len(measurements[0].lesions), largest)
    else:
        found = sum(1 for m in measurements if m.lesions)
        most = max(len(m.lesions) for m in measurements)
        text = _("Largest lesion (frame {frame} of {total}): {size}; lesions in {found} of {total} frames, "
                 "at most {most} in a frame").format(
            frame=frame + 1, total=len(measurements), size=lesionSize(largest), found=found, most=most)
    if tuple(spacing) == (1.0, 1.0):
        text += _(". The image spacing is 1 mm per pixel: if the image has no calibration, read mm as pixels.")
    return text


def largestLesion(measurements: List[LesionMeasurement]) -> Tuple[int, Lesion]:
    """``(frame index, lesion)`` of the largest lesion (by area) of all frames (the first frame on ties)."""
    return max(((frame, lesion) for frame, measurement in enumerate(measurements) for lesion in measurement.lesions),
               key=lambda pair: (pair[1].area, -pair[0]))


def lesionSize(lesion: Lesion) -> str:
    """One lesion's size: its two orthogonal diameters and its area, e.g. "12.3 x 8.1 mm, area 78.5 mm²"."""
    return _("{longest:.1f} x {perpendicular:.1f} mm, area {area:.1f} mm²").format(
        longest=lesion.longest_diameter, perpendicular=lesion.perpendicular_diameter, area=lesion.area)


def lesionsText(count: int, largest: Lesion) -> str:
    """The count and the largest lesion's size: "1 lesion: <size>" or "2 lesions; largest <size>" (never a
    length across two lesions)."""
    if count == 1:
        return _("1 lesion: {size}").format(size=lesionSize(largest))
    return _("{count} lesions; largest {size}").format(count=count, size=lesionSize(largest))


def boxSummary(segmentationNode, segmentIds, measurements: List[List[LesionMeasurement]]) -> str:
    """One line for the status label: each box segment's lesions (in its largest lesion's frame), or that none was found."""
    parts = []
    for segmentId, frames in zip(segmentIds, measurements):
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        if not any(frame.lesions for frame in frames):
            parts.append(_("{name}: no lesion found in its box").format(name=name))
            continue
        frame, largest = largestLesion(frames)
        parts.append(_("{name}: {lesions}").format(name=name, lesions=lesionsText(len(frames[frame].lesions), largest)))
    return "; ".join(parts)


def _described(row: dict) -> bool:
    return bool(row.get("shape"))


def lesionTerms(row: dict) -> str:
    """One lesion's lexicon terms and likelihood from its table row, e.g. "irregular, not parallel, not
    circumscribed, hypoechoic, posterior shadowing; malignancy likelihood 0.64"."""
    posterior = row["posterior"]
    return _("{shape}, {orientation}, {margin}, {echo}, {posterior}; malignancy likelihood {likelihood:.2f}").format(
        shape=row["shape"], orientation=row["orientation"], margin=row["margin"], echo=row["echo_pattern"],
        posterior=_("no posterior features") if posterior == "none" else _("posterior {term}").format(term=posterior),
        likelihood=row["malignancy_likelihood"])


def descriptorSummary(rows: List[dict], frame: int, frameCount: int = 1) -> str:
    """The panel's descriptor lines for ``frame`` (1 the first) from measurement-table ``rows`` (column -> value):
    its largest lesion's terms and likelihood, then each other lesion's, briefly (research use)."""
    lesions = sorted((row for row in rows if row.get("frame") == frame and str(row.get("lesion", ""))),
                     key=lambda row: -row["area"])
    where = _(" in frame {frame} of {count}").format(frame=frame, count=frameCount) if frameCount > 1 else ""
    if not lesions:
        return _("No lesion{where} to describe.").format(where=where)
    lines = []
    for number, row in enumerate(lesions):
        name = (_("Largest lesion{where} (lesion {lesion} of {count})").format(
            where=where, lesion=row["lesion"], count=len(lesions)) if number == 0 and len(lesions) > 1
            else _("Lesion{where}").format(where=where) if number == 0
            else _("Lesion {lesion}").format(lesion=row["lesion"]))
        terms = lesionTerms(row) if _described(row) else _("too small to describe")
        lines.append(f"{name}: {terms}")
    return "\n".join(lines)
