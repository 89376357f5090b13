"""Command line: segment breast lesions in ultrasound frames or clips.

Example::

    breastus-segment BreastUSSegment/Resources/Samples/*.png --output output/

For every input ``NAME.ext`` it writes ``NAME_mask.<format>`` (processed
mask, 0/1), ``NAME_probability.<format>`` (float probabilities; scaled to
0-255 for PNG), ``NAME_overlay.png`` (outline and attention heatmap of the
frame with the largest lesion area) and ``NAME_measurements.json`` (every
lesion of every frame measured and described, research use only, with the spacing and provenance; see
:mod:`.sidecar`), all or none of them; the run's ``measurements.csv`` has one
row per input, frame and lesion. ``NAME`` is the file name without its last extension
(``.nii.gz`` counts as one). Inputs whose outputs would share a name are
refused before anything runs. Existing files are never overwritten unless
``--overwrite``. One failing input does not stop the others.

With ``--box X0,Y0,X1,Y1`` (repeatable, one input only) or ``--boxes FILE.csv``
(columns file, x0, y0, x1, y1; one row per box) the lesions are segmented
inside the given boxes, in pixels of the image (x to the right, y down, x1/y1
exclusive); on a clip a box applies to every frame. A box in which no region
passes the model's minimum confidence gets no lesion ("no lesion found in box N").

``--spacing MM`` (or ``ROW_MM,COL_MM``) gives the pixel size of images whose
files carry none (PNG, JPEG); the box table may give it per image (column ``spacing``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from . import BUNDLED_WEIGHTS, __version__
from .boxes import CONTEXT_MARGIN, FRAME_WEIGHT, BoxError, parse_box, read_box_table, read_table_spacings
from .clipio import open_clip
from .clipoutputs import ClipOutputs
from .descriptors import describe_lesions
from .device import DEVICE_CHOICES
from .fileio import sha256_of_file, split_extension, write_together
from .runtime import BACKEND_CHOICES, PRECISION_CHOICES
from .imagetypes import MAX_INPUT_PIXELS, ImageReadError, parse_spacing
from .likelihood import load_likelihood_model
from .measure import measure_lesion, result_in_words
from .modelcard import WeightsError
from .options import add_settings_arguments, settings_from_args
from .sidecar import (RUN_TABLE_NAME, SIDECAR_SUFFIX, header_fields, segmenter_provenance, sidecar_json, sidecar_record,
                      spacing_source, table_rows, write_table)
from .preprocessing import InvalidImageError
from .stream import CHUNK_FRAMES, ClipSummary, segment_stream
from .temporal import TemporalRule
from .visualize import FIGURE_MAX_SIDE, overlay_figure

FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz", "png": ".png"}
EPILOG = (
    f"Frames larger than {MAX_INPUT_PIXELS:,} pixels are refused; so are clips of more pixels (frames x rows x "
    "columns) unless read from NRRD and written as NRRD, which is done a chunk of frames at a time. The overlay shows "
    f"frames longer than {FIGURE_MAX_SIDE} pixels shrunk. Exit status: 0 all inputs segmented, 1 some failed, "
    "2 the batch did not start or was stopped (bad options, colliding output names, unusable output folder, "
    "broken model), 130 interrupted (Ctrl-C, SIGINT), 143 stopped by SIGTERM; an interrupted run keeps the "
    "outputs of the inputs it finished, none of the input it was writing, and says how many were not run.")


def box_argument(text: str):
    """``--box X0,Y0,X1,Y1`` as a box; a bad one is a usage error."""
    try:
        return parse_box(text)
    except BoxError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_integer(text: str) -> int:
    """A whole number of at least 1; anything else is a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def spacing_argument(text: str):
    """``--spacing MM`` or ``ROW_MM,COL_MM`` as ``(row_mm, col_mm)``; a bad one is a usage error."""
    try:
        return parse_spacing(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def temporal_argument(text: str):
    """``--temporal K/N`` as a rule (None for off); a bad one is a usage error."""
    try:
        return TemporalRule.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastus-segment", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="image files: PNG/JPG/BMP/TIFF, DICOM, NRRD, NIfTI, MHA (default with --boxes: the table's files)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS, help="model .safetensors (model card beside it)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="nrrd", help="file format of mask and probability")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the network runs (default: auto)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="what runs the network (default auto: PyTorch on a GPU, else OpenVINO, else ONNX Runtime, "
                             "else PyTorch on the CPU)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="fp32, or bf16 (torch, openvino); default auto: bf16 where the CPU computes it natively")
    parser.add_argument("--no-postprocess", action="store_true", help="write the raw thresholded mask")
    parser.add_argument("--temporal", type=temporal_argument, default=None, metavar="K/N",
                        help="clips: show a lesion only where it overlaps one found on K of the N frames before "
                             "(see README); default off")
    parser.add_argument("--no-figure", action="store_true", help="do not write the overlay PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--batch-size", type=positive_integer, default=8, help="frames per forward pass for clips")
    parser.add_argument("--box", action="append", type=box_argument, metavar="X0,Y0,X1,Y1",
                        help="segment inside this box (pixels; x1, y1 exclusive); repeat for several lesions; one input only")
    parser.add_argument("--boxes", type=Path, metavar="FILE.csv",
                        help="boxes for many images: a CSV file with columns file, x0, y0, x1, y1 (and optionally "
                             "spacing, MM or ROW_MM,COL_MM), one row per box")
    parser.add_argument("--spacing", type=spacing_argument, metavar="MM|ROW_MM,COL_MM",
                        help="pixel size in mm of every input, replacing the file's own (PNG and JPEG have none: "
                             "without it their sizes are in pixels)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_settings_arguments(parser)
    return parser


# ---------------------------------------------------------------- planning the outputs


@dataclass
class Job:
    """One input file and the files it is to produce (kind -> path; kinds: mask, probability, figure)."""

    image_path: Path
    outputs: dict[str, Path]
    boxes: Optional[Union[list, BoxError]] = None  # None: automatic; else the boxes (or the box table's error)
    spacing: Optional[Union[tuple, BoxError]] = None  # (row_mm, col_mm) the user gave (or the box table's error); None: the file's own


def output_name(image_path: Path) -> str:
    """The name outputs of ``image_path`` start with: its file name without the last extension."""
    return split_extension(image_path.name)[0]


def output_paths(image_path: Path, output_dir: Path, suffix: str, figure: bool = True) -> dict[str, Path]:
    name = output_name(image_path)
    paths = {"mask": output_dir / f"{name}_mask{suffix}", "probability": output_dir / f"{name}_probability{suffix}"}
    if figure:
        paths["figure"] = output_dir / f"{name}_overlay.png"
    paths["measurements"] = output_dir / f"{name}{SIDECAR_SUFFIX}"
    return paths


def plan_jobs(args, boxes: Optional[dict] = None, spacings: Optional[dict] = None) -> list[Job]:
    spacings = spacings or {}
    return [Job(path, output_paths(path, args.output, FORMATS[args.format], not args.no_figure),
                None if boxes is None else boxes[path], spacings.get(path, args.spacing)) for path in args.inputs]


def spacings_per_input(parser: argparse.ArgumentParser, args) -> dict:
    """The spacing of each input from the box table's ``spacing`` column (--spacing applies to the others)."""
    if not args.boxes:
        return {}
    try:
        table = read_table_spacings(args.boxes)
    except BoxError as error:
        parser.error(str(error))
    if table and args.spacing is not None:
        parser.error("give the spacing with --spacing or in the box table's spacing column, not both")
    return {path: table[path.resolve()] for path in args.inputs if path.resolve() in table}


def boxes_per_input(parser: argparse.ArgumentParser, args) -> Optional[dict]:
    """The boxes of each input from ``--box`` or ``--boxes`` (None: automatic); fills ``args.inputs`` from the table."""
    if args.box and args.boxes:
        parser.error("give --box or --boxes, not both")
    if args.box:
        if len(args.inputs) != 1:
            parser.error(f"--box applies to a single input ({len(args.inputs)} given); use --boxes FILE.csv for several")
        return {args.inputs[0]: args.box}
    if args.boxes:
        try:
            table = read_box_table(args.boxes)
        except BoxError as error:
            parser.error(str(error))
        if not args.inputs:
            args.inputs = list(table)
        return {path: table.get(path.resolve(), []) for path in args.inputs}
    if not args.inputs:
        parser.error("give at least one image file")
    return None


def collisions(jobs: list[Job]) -> list[str]:
    """One line per output that two inputs would write, or that would replace an input.

    Names are compared without case, as on the case-insensitive file systems of Windows and macOS.
    """
    def key(path: Path) -> str:
        return os.path.normcase(os.path.abspath(path)).casefold()

    inputs = {key(job.image_path) for job in jobs}
    writers: dict[str, Job] = {}
    problems = []
    for job in jobs:
        for path in job.outputs.values():
            if key(path) in writers:
                problems.append(f"{writers[key(path)].image_path} and {job.image_path} would both write {path}")
            writers.setdefault(key(path), job)
            if key(path) in inputs:
                problems.append(f"{job.image_path} would write {path}, which is an input of this run")
    return problems


def output_folder_problem(folder: Path) -> str:
    """Create ``folder`` if missing; say why outputs cannot be written there ("" when they can)."""
    if folder.exists() and not folder.is_dir():
        return f"--output {folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the output folder {folder}: {error.strerror or error}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write to the output folder {folder} (permission denied)"
    return ""


# ---------------------------------------------------------------- one input


def segment_file(segmenter, job: Job, args) -> tuple:
    """Segment one file with the segmenter's post-processing, write its outputs; return a one-line summary and
    its sidecar record.

    A clip is segmented a chunk of frames at a time (:mod:`.stream`) with a progress bar per frame; as NRRD
    it is also read (where :mod:`.clipio` can) and written in chunks, so memory does not grow with its length.
    """
    options = segmenter.postprocessing
    for problem in (job.boxes, job.spacing):
        if isinstance(problem, BoxError):  # an invalid row of the box table
            raise problem
    clip = open_clip(job.image_path)
    if job.boxes is not None and not job.boxes:
        raise BoxError(f"no box for it in {args.boxes}")
    if args.format == "png" and clip.frame_count > 1:
        raise InvalidImageError(f"a clip of {clip.frame_count} frames cannot be written as PNG; use --format nrrd")
    spacing = clip.spacing if job.spacing is None else job.spacing
    geometry = clip.geometry if job.spacing is None or clip.geometry is None else replace(
        clip.geometry, spacing=(spacing[1], spacing[0]) + tuple(clip.geometry.spacing[2:]))

    def record_of(frames: list, descriptors: list) -> dict:
        return sidecar_record(
            input_path=job.image_path, input_sha256=input_sha256, frame_shape=clip.frame_shape, spacing=spacing,
            source=spacing_source(clip.spacing_source, user=job.spacing is not None), frames=frames,
            descriptors=descriptors,
            boxes=None if job.boxes is None else [box.as_tuple() for box in job.boxes],
            provenance_block=provenance_block, outputs={kind: path.name for kind, path in job.outputs.items()},
        )

    input_sha256, provenance_block = sha256_of_file(job.image_path), run_provenance(segmenter, args)
    summary = ClipSummary(None if args.no_postprocess else options,
                          (lambda result: result.raw_mask) if args.no_postprocess else
                          (lambda result: result.processed_mask))
    frames, words, descriptors = [], [], []
    likelihood = load_likelihood_model()
    pending = {}  # frame number -> the input frame, until its result is described (a chunk of frames at most)

    def frames_in():
        for number, frame in enumerate(frame for chunk in clip.chunks(CHUNK_FRAMES) for frame in chunk):
            pending[number] = frame
            yield frame

    shown = None  # (area, -number, number, frame, mask, attention) of the figure's frame: the largest lesion area
    results = segment_stream(
        segmenter, frames_in(), box=job.boxes or None, batch_size=args.batch_size,
        temporal=args.temporal if clip.frame_count > 1 and not args.no_postprocess else None,
    )
    from tqdm import tqdm

    # the streamed files are temporaries until write_all renames them with the others; leaving the block
    # (an error, an interrupt) removes them
    with ClipOutputs(job.outputs, clip, FORMATS[args.format], spacing, geometry,
                     metadata=header_fields(record_of([], []))) as images:
        for result in tqdm(results, total=clip.frame_count, desc=job.image_path.name, unit="frame", leave=False,
                           disable=clip.frame_count < 2):
            mask = summary.mask_of(result)
            summary.add(result)
            images.add(result, mask)
            labels = box_label_frame(result, mask.shape)
            measured = measure_lesion(mask, spacing, result.index + 1, labels)
            frames.append(measured)
            frame = pending.pop(result.index)
            descriptors.append(describe_lesions(frame, mask, spacing, labels, likelihood))
            words.append(result_in_words(measured.lesions, empty_boxes_of(result, result.index, measured.lesions)))
            if shown is None or (measured.area_mm2, -result.index) > shown[:2]:  # the frame copied out of its chunk
                shown = (measured.area_mm2, -result.index, result.index, frame.copy(), mask, result.combined_attention)
        record = record_of([(frame.lesions, text) for frame, text in zip(frames, words)], descriptors)
        writers = {
            **images.writers(),
            # a file name that is not UTF-8 is written as a \udcXX escape (valid JSON, read back as the same name)
            "measurements": lambda temporary: Path(temporary).write_text(sidecar_json(record), encoding="utf-8",
                                                                         errors="backslashreplace"),
        }
        if "figure" in job.outputs:
            number, frame, mask, attention = shown[2:]
            figure = overlay_figure(
                frame, mask, attention, result_text=words[number],
                boxes=[(outcome.index + 1, outcome.box.as_tuple()) for outcome in summary.boxes or []
                       if outcome.frame == number],
                frame_text=f"frame {number + 1} of {clip.frame_count}" if clip.frame_count > 1 else "",
            )
            writers["figure"] = lambda temporary: figure.save(temporary, format="PNG")
        write_all(job.outputs, writers, exclusive=not args.overwrite)
    return lesion_summary(job.image_path, record, frames, words, summary,
                          None if args.no_postprocess else options), record


def run_provenance(segmenter, args) -> dict:
    """The provenance block of this run's sidecars: model, every setting, device and precision."""
    settings = {**segmenter.postprocessing.to_dict(), "postprocess": not args.no_postprocess}
    if args.box or args.boxes:
        settings.update(box_context_margin=CONTEXT_MARGIN, box_frame_weight=FRAME_WEIGHT)
    return segmenter_provenance(segmenter, settings, args.weights)


def box_label_frame(result, shape) -> Optional[np.ndarray]:
    """Per pixel of one frame, the number of the box it lies in (0 outside; the earlier box where boxes overlap);
    None without boxes. ``result`` is the frame's :class:`.stream.FrameResult`."""
    if result.boxes is None:
        return None
    labels = np.zeros(shape, dtype=np.uint16)
    for outcome in result.boxes:
        region = labels[outcome.box.slices]
        region[region == 0] = outcome.index + 1
    return labels


def empty_boxes_of(result, frame: int, lesions) -> list:
    """The numbers (1 for the first) of the boxes of ``frame`` that hold none of its ``lesions`` (measured);
    ``result`` is anything with ``boxes`` (BoxOutcomes, frames numbered from 0 in the clip), such as the frame's
    :class:`.stream.FrameResult` or a ClipSummary."""
    found = {lesion.box for lesion in lesions}
    return [outcome.index + 1 for outcome in result.boxes or [] if outcome.frame == frame and outcome.index + 1 not in found]


def write_all(paths: dict[str, Path], writers: dict[str, Callable[[str], None]], exclusive: bool) -> None:
    """Write every output of one input (kind -> path, kind -> function writing a temporary file) all or none:
    every file is written under a temporary name before any is renamed, so on a failure (a full disk, an
    interrupt) the earlier outputs stay as they were (see :func:`.fileio.write_together`)."""
    write_together({paths[kind]: writers[kind] for kind in paths}, exclusive=exclusive)


def lesion_summary(image_path: Path, record: dict, frames: list, words: list, result, options) -> str:
    """The line printed for a segmented file: the lesions of the first frame that has any, each on its own;
    ``frames`` are its :class:`.measure.LesionMeasurement`, ``words`` each frame's result in words, ``options``
    None when post-processing was off."""
    frames_with_lesion = sum(1 for frame in frames if frame.lesions)
    name = image_path.name
    if frames_with_lesion == 0:
        if result.boxes is not None:
            return f"{name}: {words[0] if result.frame_count == 1 else 'no lesion found in any box'}"
        why = None if options is None else result.why_empty  # what post-processing hid, found as it ran
        rejected = None if why is None else why.rejected_lesion_probability
        if rejected is not None:
            return (f"{name}: no lesion found (the lesion head's probability, {rejected:.2f} at most, "
                    f"is below --min-lesion-probability {options.min_lesion_probability:.2f})")
        hidden = None if why is None else why.hidden_confidence
        return f"{name}: no lesion found" + (
            "" if hidden is None else
            f" (the strongest candidate region, mean probability {hidden:.2f}, is below --min-confidence "
            f"{options.min_mean_probability:.2f})"
        )
    first = next(number for number, frame in enumerate(frames) if frame.lesions)
    unit = "mm" if record["spacing"]["source"] != "default" else "px"
    lesions = "; ".join(
        f"lesion {lesion.lesion}" + (f" (box {lesion.box})" if lesion.box is not None else "")
        + f": area {lesion.area:.1f} {unit}², diameters {lesion.longest_diameter:.1f} x "
        f"{lesion.perpendicular_diameter:.1f} {unit}"
        for lesion in frames[first].lesions
    )
    where = f"frame {first + 1}: " if result.frame_count > 1 else ""
    empty = empty_boxes_of(result, first, frames[first].lesions)
    return (f"{name}: lesion in {frames_with_lesion}/{result.frame_count} frame(s); {where}"
            f"{result_in_words(frames[first].lesions)}: {lesions}"
            + (f"; no lesion found in box {', '.join(map(str, empty))}" if empty else "")
            + ("" if unit == "mm" else " (pixel spacing unknown: give --spacing)"))


def describe_failure(error: Exception) -> str:
    """One line for an error of one input (the caller puts the input's name in front)."""
    if isinstance(error, ImageReadError):
        return error.problem
    if isinstance(error, FileExistsError):
        return f"would overwrite {error.filename}, which exists or was just written by another run (use --overwrite)"
    if isinstance(error, MemoryError):
        return "out of memory"
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"cannot write {error.filename}: {error.strerror}"
    if isinstance(error, (InvalidImageError, OSError, ValueError, RuntimeError)):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------- the batch


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    boxes = boxes_per_input(parser, args)
    spacings = spacings_per_input(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 print as escapes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    jobs = plan_jobs(args, boxes, spacings)
    problems = collisions(jobs)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: nothing was segmented; rename the inputs or segment them into separate --output folders",
              file=sys.stderr)
        return 2
    problem = output_folder_problem(args.output)
    if not problem and (args.output / RUN_TABLE_NAME).exists() and not args.overwrite:
        problem = f"{args.output / RUN_TABLE_NAME} exists (use --overwrite, or another --output folder)"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    tally = Tally(len(jobs))
    try:
        with interrupts_raised():
            return segment_all(jobs, args, tally)
    except (Interrupted, KeyboardInterrupt) as stop:
        number = stop.signal_number if isinstance(stop, Interrupted) else signal.SIGINT
        print(f"interrupted: {tally.segmented} segmented, " + (f"{tally.failed} failed, " if tally.failed else "")
              + f"{tally.total - tally.segmented - tally.failed} not run", file=sys.stderr)
        return 128 + int(number)


def segment_all(jobs: list[Job], args, tally: "Tally") -> int:
    """Load the model and segment every job; returns the exit status."""
    from .inference import LesionSegmenter

    try:
        segmenter = LesionSegmenter.from_weights(args.weights, device=args.device, backend=args.backend,
                                                 precision=args.precision, **settings_from_args(args))
    except (WeightsError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    network = segmenter.provenance
    print(f"network: {network['backend']} {network['precision']} on {network['device']}", file=sys.stderr)
    return run_jobs(segmenter, jobs, args, tally)


@dataclass
class Tally:
    """How many inputs of a batch were segmented and how many failed so far."""

    total: int
    segmented: int = 0
    failed: int = 0


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException, so that no handler of one input's errors takes it."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


@contextmanager
def interrupts_raised():
    """While the batch runs, SIGINT (Ctrl-C) and SIGTERM raise :class:`Interrupted` in the main thread; signals
    after the first are ignored, so that the input being written is cleaned up and the summary printed."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def stop(number, _frame):
        for other in (signal.SIGINT, signal.SIGTERM):
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(number)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_jobs(segmenter, jobs: list[Job], args, tally: Optional[Tally] = None) -> int:
    """Segment every job, each on its own: a failure is reported and the next job runs.

    Only a broken model (:class:`WeightsError`) stops the batch, as it would fail every input alike.
    Counts in ``tally``; prints ``N segmented, M failed`` at the end; returns the exit status.
    """
    from tqdm import tqdm

    tally = tally or Tally(len(jobs))
    model_broken = False
    rows: list = []
    with tqdm(jobs, desc="Segmenting", unit="file", disable=len(jobs) < 2) as progress:
        for job in progress:
            existing = [str(path) for path in job.outputs.values() if path.exists()]
            if existing and not args.overwrite:
                tqdm.write(f"error: {job.image_path}: would overwrite {', '.join(existing)} (use --overwrite)",
                           file=sys.stderr)
                tally.failed += 1
                continue
            try:
                summary, record = segment_file(segmenter, job, args)
                rows.extend(table_rows(record, str(job.image_path)))
                write_table(args.output / RUN_TABLE_NAME, rows)  # after every input, so a stopped run keeps its table
                tqdm.write(summary)
                tally.segmented += 1
            except WeightsError as error:
                tqdm.write(f"error: {job.image_path}: {error}", file=sys.stderr)
                tally.failed += 1
                model_broken = True
                break
            except Exception as error:  # any failure of one input: report it, go on with the next
                tqdm.write(f"error: {job.image_path}: {describe_failure(error)}", file=sys.stderr)
                tally.failed += 1
    not_run = tally.total - tally.segmented - tally.failed
    print(f"{tally.segmented} segmented, {tally.failed} failed"
          + (f", {not_run} not run (the model is broken)" if not_run else ""))
    if model_broken:
        return 2
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
