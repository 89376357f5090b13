"""The status lines the panel shows after a run or a measurement: the lesion's size, or why none is shown."""

from typing import List

from BreastUSSegmentLib.measure import LesionMeasurement

from .common import _


def measurementSummary(
    measurements: List[LesionMeasurement], spacing=(1.0, 1.0), hiddenConfidence=None, minConfidence=None,
    rejectedLesionProbability=None, minLesionProbability=None,
) -> str:
    """One line for the status label: the lesion's size (in the frame where it is largest for a clip).

    When nothing was found because the lesion head judged every frame below ``minLesionProbability``
    (``rejectedLesionProbability``, its highest probability), or Min. confidence hid a candidate region
    (``hiddenConfidence``, its mean probability, below ``minConfidence``), say so and how to show it.
    """
    if not measurements or all(m.pixel_count == 0 for m in measurements):
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
    frame = max(range(len(measurements)), key=lambda index: measurements[index].area_mm2)
    largest = measurements[frame]
    text = _("Lesion area {area:.1f} mm², largest diameter {diameter:.1f} mm").format(
        area=largest.area_mm2, diameter=largest.largest_diameter_mm)
    if len(measurements) > 1:
        found = sum(1 for m in measurements if m.pixel_count)
        text += _(" (largest in frame {frame}; lesion in {found} of {total} frames)").format(
            frame=frame + 1, found=found, total=len(measurements))
    if tuple(spacing) == (1.0, 1.0):
        text += _(". The image spacing is 1 mm per pixel: if the image has no calibration, read mm as pixels.")
    return text


def boxSummary(segmentationNode, segmentIds, measurements: List[List[LesionMeasurement]]) -> str:
    """One line for the status label: each box segment's lesion size (largest frame), or that none was seen."""
    parts = []
    for segmentId, frames in zip(segmentIds, measurements):
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        largest = max(frames, key=lambda m: m.area_mm2) if frames else None
        if largest is None or largest.pixel_count == 0:
            parts.append(_("{name}: no lesion seen in its box").format(name=name))
        else:
            parts.append(_("{name}: area {area:.1f} mm², largest diameter {diameter:.1f} mm").format(
                name=name, area=largest.area_mm2, diameter=largest.largest_diameter_mm))
    return "; ".join(parts)
