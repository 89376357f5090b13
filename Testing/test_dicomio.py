"""Reading DICOM ultrasound files: photometric interpretations, frames, spacing sources, bad files."""

import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.pixels import convert_color_space
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, generate_uid)

from BreastUSSegmentLib import dicomio, imagetypes
from BreastUSSegmentLib.dicomio import has_dicom_magic, looks_like_dicom, read_dicom
from BreastUSSegmentLib.imageio import ImageReadError, read_image

HEIGHT, WIDTH = 24, 32
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def make_dataset(pixels, photometric="MONOCHROME2", *, frames=None, bits_stored=None, signed=False,
                 transfer_syntax=ExplicitVRLittleEndian, pixel_bytes=None, **elements):
    """A minimal ultrasound dataset holding ``pixels`` (frame axis first when ``frames`` is set)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = US_MULTIFRAME if frames else US_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    samples = 3 if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") else 1
    frame_shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = frame_shape[:2]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_bytes if pixel_bytes is not None else pixels.tobytes()
    return ds


def write(path, dataset, **options):
    dcmwrite(path, dataset, enforce_file_format=options.pop("enforce_file_format", True), **options)
    return Path(path)


def random_array(shape, dtype=np.uint8, high=256, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def ultrasound_region(delta_x, delta_y, units=3, bounds=(0, 0, WIDTH - 1, HEIGHT - 1)):
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = bounds[0], bounds[1]
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = bounds[2], bounds[3]
    region.PhysicalUnitsXDirection = units
    region.PhysicalUnitsYDirection = units
    region.PhysicalDeltaX = delta_x
    region.PhysicalDeltaY = delta_y
    return region


# ---------------------------------------------------------------- grayscale


def test_monochrome2_with_pixel_spacing(tmp_path):
    pixels = random_array((HEIGHT, WIDTH))
    path = write(tmp_path / "frame.dcm", make_dataset(pixels, PixelSpacing=[0.3, 0.2]))
    image = read_image(path)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.pixels.dtype == np.uint8 and not image.color
    assert image.spacing == pytest.approx((0.3, 0.2)) and image.spacing_source == "PixelSpacing"
    assert image.frame_count == 1 and image.frame_shape == (HEIGHT, WIDTH)


def test_16_bit_monochrome2_stays_uint16(tmp_path):
    pixels = random_array((HEIGHT, WIDTH), np.uint16, high=4096)
    image = read_image(write(tmp_path / "deep.dcm", make_dataset(pixels, bits_stored=12)))
    assert image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, pixels)


@pytest.mark.parametrize(
    ("dtype", "bits_stored", "signed", "expected"),
    [
        (np.uint8, 8, False, lambda v: 255 - v),
        (np.uint16, 12, False, lambda v: 4095 - v),
        (np.int16, 16, True, lambda v: -1 - v),
    ],
    ids=["8-bit", "12-bit", "signed-16-bit"],
)
def test_monochrome1_is_inverted_so_bright_is_high(tmp_path, dtype, bits_stored, signed, expected):
    low, high = (-2000, 2000) if signed else (0, 2**bits_stored)
    pixels = np.random.default_rng(1).integers(low, high, (HEIGHT, WIDTH)).astype(dtype)
    dataset = make_dataset(pixels, "MONOCHROME1", bits_stored=bits_stored, signed=signed)
    image = read_image(write(tmp_path / "inverted.dcm", dataset))
    assert image.pixels.dtype == dtype
    np.testing.assert_array_equal(image.pixels, expected(pixels.astype(np.int64)).astype(dtype))
    # ordering is reversed: the darkest stored pixel is now the brightest
    assert image.pixels.flat[np.argmin(pixels)] == image.pixels.max()


def test_non_identity_rescale_is_applied_and_identity_is_not(tmp_path):
    pixels = random_array((HEIGHT, WIDTH))
    rescaled = read_image(write(tmp_path / "r.dcm", make_dataset(pixels, RescaleSlope=2, RescaleIntercept=-10)))
    identity = read_image(write(tmp_path / "i.dcm", make_dataset(pixels, RescaleSlope=1, RescaleIntercept=0)))
    assert rescaled.pixels.dtype == np.float32
    np.testing.assert_allclose(rescaled.pixels, 2.0 * pixels - 10.0)
    assert identity.pixels.dtype == np.uint8
    np.testing.assert_array_equal(identity.pixels, pixels)


def test_multiframe_reads_as_frames(tmp_path):
    clip = random_array((3, HEIGHT, WIDTH), seed=2)
    image = read_image(write(tmp_path / "clip.dcm", make_dataset(clip, frames=3)))
    assert image.pixels.shape == (3, HEIGHT, WIDTH) and not image.color
    assert image.frame_count == 3 and image.frame_shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(image.pixels, clip)


# ---------------------------------------------------------------- colour


def test_rgb_is_read_as_colour(tmp_path):
    rgb = random_array((HEIGHT, WIDTH, 3), seed=3)
    image = read_image(write(tmp_path / "rgb.dcm", make_dataset(rgb, "RGB")))
    assert image.color and image.frame_count == 1 and image.frame_shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(image.pixels, rgb)


def test_rgb_planar_configuration_1_is_interleaved_on_reading(tmp_path):
    rgb = random_array((HEIGHT, WIDTH, 3), seed=4)
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    dataset = make_dataset(rgb, "RGB", pixel_bytes=planes)
    dataset.PlanarConfiguration = 1
    np.testing.assert_array_equal(read_image(write(tmp_path / "planar.dcm", dataset)).pixels, rgb)


def test_multiframe_rgb_reads_as_colour_frames(tmp_path):
    clip = random_array((2, HEIGHT, WIDTH, 3), seed=5)
    image = read_image(write(tmp_path / "rgbclip.dcm", make_dataset(clip, "RGB", frames=2)))
    assert image.color and image.frame_count == 2 and image.pixels.shape == (2, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image.pixels, clip)


def test_ybr_full_is_converted_to_rgb(tmp_path):
    rgb = random_array((HEIGHT, WIDTH, 3), seed=6)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    assert np.abs(ybr.astype(int) - rgb).max() > 50  # the stored values really differ from RGB
    image = read_image(write(tmp_path / "ybr.dcm", make_dataset(ybr, "YBR_FULL")))
    assert image.color and image.pixels.shape == rgb.shape
    assert np.abs(image.pixels.astype(int) - rgb).max() <= 2


def test_ybr_full_422_is_upsampled_and_converted_to_rgb(tmp_path):
    # pairs of neighbouring columns share one colour, so 4:2:2 chroma subsampling loses nothing
    pairs = random_array((HEIGHT, WIDTH // 2, 3), seed=7)
    rgb = np.repeat(pairs, 2, axis=1)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    packed = np.empty((HEIGHT, WIDTH // 2, 4), np.uint8)  # native layout: Y1 Y2 Cb Cr
    packed[..., 0], packed[..., 1] = ybr[:, 0::2, 0], ybr[:, 1::2, 0]
    packed[..., 2], packed[..., 3] = ybr[:, 0::2, 1], ybr[:, 0::2, 2]
    dataset = make_dataset(rgb, "YBR_FULL_422", pixel_bytes=packed.tobytes())
    image = read_image(write(tmp_path / "ybr422.dcm", dataset))
    assert image.color and image.pixels.shape == rgb.shape
    assert np.abs(image.pixels.astype(int) - rgb).max() <= 2


def test_palette_colour_goes_through_its_lookup_table(tmp_path):
    indices = random_array((HEIGHT, WIDTH), high=4, seed=8)
    red = np.array([0, 65535, 0, 0], np.uint16)
    green = np.array([0, 0, 65535, 30000], np.uint16)
    blue = np.array([0, 0, 0, 65535], np.uint16)
    dataset = make_dataset(indices, "PALETTE COLOR")
    for name, table in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(dataset, f"{name}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(dataset, f"{name}PaletteColorLookupTableData", table.tobytes())
    image = read_image(write(tmp_path / "palette.dcm", dataset))
    assert image.color and image.pixels.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image.pixels, np.stack([red, green, blue], axis=-1)[indices])


# ---------------------------------------------------------------- spacing


def test_imager_pixel_spacing_is_used_without_pixel_spacing(tmp_path):
    dataset = make_dataset(random_array((HEIGHT, WIDTH)), ImagerPixelSpacing=[0.12, 0.08])
    image = read_image(write(tmp_path / "imager.dcm", dataset))
    assert image.spacing == pytest.approx((0.12, 0.08)) and image.spacing_source == "ImagerPixelSpacing"


def test_pixel_spacing_wins_over_imager_pixel_spacing(tmp_path):
    dataset = make_dataset(random_array((HEIGHT, WIDTH)), PixelSpacing=[0.5, 0.4], ImagerPixelSpacing=[0.12, 0.08])
    assert read_image(write(tmp_path / "both.dcm", dataset)).spacing == pytest.approx((0.5, 0.4))


def test_ultrasound_region_in_cm_becomes_mm(tmp_path):
    dataset = make_dataset(random_array((HEIGHT, WIDTH)))
    dataset.SequenceOfUltrasoundRegions = [ultrasound_region(delta_x=0.01, delta_y=0.02)]
    image = read_image(write(tmp_path / "region.dcm", dataset))
    assert image.spacing == pytest.approx((0.2, 0.1))  # (row = Y, column = X), cm * 10
    assert image.spacing_source == "SequenceOfUltrasoundRegions"


def test_ultrasound_region_holding_the_centre_is_preferred(tmp_path):
    dataset = make_dataset(random_array((HEIGHT, WIDTH)))
    doppler = ultrasound_region(delta_x=0.05, delta_y=0.5, units=4, bounds=(0, 0, WIDTH - 1, HEIGHT - 1))
    corner = ultrasound_region(delta_x=0.03, delta_y=0.03, bounds=(0, 0, 5, 5))
    centre = ultrasound_region(delta_x=0.015, delta_y=0.025, bounds=(4, 4, WIDTH - 2, HEIGHT - 2))
    dataset.SequenceOfUltrasoundRegions = [doppler, corner, centre]
    assert read_image(write(tmp_path / "regions.dcm", dataset)).spacing == pytest.approx((0.25, 0.15))


def test_first_cm_region_is_used_when_none_holds_the_centre(tmp_path):
    dataset = make_dataset(random_array((HEIGHT, WIDTH)))
    seconds = ultrasound_region(delta_x=0.01, delta_y=0.01, units=4)
    corner = ultrasound_region(delta_x=0.03, delta_y=0.04, bounds=(0, 0, 5, 5))
    dataset.SequenceOfUltrasoundRegions = [seconds, corner]
    image = read_image(write(tmp_path / "corner.dcm", dataset))
    assert image.spacing == pytest.approx((0.4, 0.3))
    assert image.spacing_source == "SequenceOfUltrasoundRegions"


def test_no_calibration_means_unknown_spacing(tmp_path):
    dataset = make_dataset(random_array((HEIGHT, WIDTH)))
    dataset.SequenceOfUltrasoundRegions = [ultrasound_region(delta_x=0.01, delta_y=0.01, units=0)]
    image = read_image(write(tmp_path / "plain.dcm", dataset))
    assert image.spacing == (1.0, 1.0) and image.spacing_source == "unknown"


def test_enhanced_functional_group_pixel_spacing(tmp_path):
    dataset = make_dataset(random_array((2, HEIGHT, WIDTH)), frames=2)
    measures, group = Dataset(), Dataset()
    measures.PixelSpacing = [0.07, 0.09]
    group.PixelMeasuresSequence = [measures]
    dataset.SharedFunctionalGroupsSequence = [group]
    image = read_image(write(tmp_path / "enhanced.dcm", dataset))
    assert image.spacing == pytest.approx((0.07, 0.09)) and image.spacing_source == "PixelSpacing"


# ---------------------------------------------------------------- detection by content


def test_dicom_is_detected_by_content_whatever_the_name(tmp_path):
    pixels = random_array((HEIGHT, WIDTH), seed=9)
    for name in ("IM0001", "frame.png", "export.bin"):
        path = write(tmp_path / name, make_dataset(pixels, PixelSpacing=[0.3, 0.3]))
        assert has_dicom_magic(path)
        image = read_image(path)
        np.testing.assert_array_equal(image.pixels, pixels)
        assert image.spacing_source == "PixelSpacing"


def test_dicom_without_preamble_or_meta_is_read_when_it_has_no_suffix(tmp_path):
    pixels = random_array((HEIGHT, WIDTH), seed=10)
    dataset = make_dataset(pixels)
    dataset.file_meta = FileMetaDataset()
    path = write(tmp_path / "bare", dataset, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert not has_dicom_magic(path) and looks_like_dicom(path)
    np.testing.assert_array_equal(read_image(path).pixels, pixels)


def test_non_dicom_files_are_not_taken_for_dicom(tmp_path):
    text = tmp_path / "notes"
    text.write_text("plain text that happens to have no suffix\n" * 5)
    assert not has_dicom_magic(text) and not looks_like_dicom(text)


# ---------------------------------------------------------------- bad files


def _bad_dicom_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    no_pixels = make_dataset(random_array((HEIGHT, WIDTH)))
    del no_pixels.PixelData
    files["no pixel data"] = write(tmp_path / "nopixels.dcm", no_pixels)
    files["hsv"] = write(tmp_path / "hsv.dcm", make_dataset(random_array((HEIGHT, WIDTH)), "HSV"))
    junk = encapsulate([b"\xff\xd8\xff\xf7 not a real JPEG-LS frame"])
    compressed = make_dataset(random_array((HEIGHT, WIDTH)), transfer_syntax=JPEGLSLossless, pixel_bytes=junk)
    files["compressed"] = write(tmp_path / "jpegls.dcm", compressed)
    files["zero rows"] = write(tmp_path / "zero.dcm", make_dataset(np.zeros((0, 0), np.uint8)))
    files["text as dcm"] = tmp_path / "notes.dcm"
    files["text as dcm"].write_text("definitely not DICOM\n" * 10)
    files["truncated"] = tmp_path / "truncated.dcm"
    whole = write(tmp_path / "whole.dcm", make_dataset(random_array((HEIGHT, WIDTH))))
    files["truncated"].write_bytes(whole.read_bytes()[:-100])
    return files


BAD_DICOM_PROBLEMS = {
    "no pixel data": "has no pixel data",
    "hsv": "photometric interpretation 'HSV' is not supported",
    "compressed": "JPEG-LS",
    "zero rows": "no pixels",
    "text as dcm": "DICOM",
    "truncated": "cannot decode the pixel data",
}


@pytest.mark.parametrize("case", sorted(BAD_DICOM_PROBLEMS))
def test_bad_dicom_raises_an_error_naming_the_file(tmp_path, case):
    path = _bad_dicom_files(tmp_path)[case]
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    assert str(path) in str(error.value)
    assert BAD_DICOM_PROBLEMS[case] in str(error.value)
    with pytest.raises(ImageReadError):
        read_dicom(path)


def test_implicit_vr_file_with_meta_reads(tmp_path):
    pixels = random_array((HEIGHT, WIDTH), np.uint16, high=1000, seed=11)
    path = write(tmp_path / "implicit.dcm", make_dataset(pixels, transfer_syntax=ImplicitVRLittleEndian))
    np.testing.assert_array_equal(read_image(path).pixels, pixels)


# ---------------------------------------------------------------- the pipeline accepts what is read


def test_multiframe_dicom_feeds_the_segmenter(tmp_path, tiny_segmenter):
    clip = random_array((3, HEIGHT, WIDTH), seed=12)
    image = read_image(write(tmp_path / "clip.dcm", make_dataset(clip, frames=3, PixelSpacing=[0.2, 0.2])))
    result = tiny_segmenter.segment(image.pixels, color=image.color)
    expected = (image.frame_count, *image.frame_shape)
    assert expected == (3, HEIGHT, WIDTH)
    assert result.probability.shape == expected
    assert result.processed_mask.shape == expected
    assert result.combined_attention.shape == expected


def test_a_broken_jpeg_2000_frame_gives_one_clean_error_and_no_decoder_traceback(tmp_path, caplog):
    """pydicom logs every failing decoder's traceback; the error raised already says it in one line."""
    source = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    codestream = b"".join(next(generate_fragmented_frames(source.PixelData)))
    broken = make_dataset(np.zeros((64, 64), np.uint16), transfer_syntax=JPEG2000Lossless,
                          pixel_bytes=encapsulate([codestream[:150] + bytes(10)]))
    path = write(tmp_path / "broken_j2k.dcm", broken)
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError) as error:
        read_image(path)
    assert str(path) in str(error.value) and "JPEG 2000" in str(error.value)
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_a_dicom_over_the_size_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(imagetypes, "MAX_INPUT_PIXELS", 2 * HEIGHT * WIDTH)
    path = write(tmp_path / "clip.dcm", make_dataset(random_array((3, HEIGHT, WIDTH)), frames=3))
    monkeypatch.setattr(dicomio, "pixel_array", lambda dataset: pytest.fail("the pixels were decoded"))
    with pytest.raises(ImageReadError, match=f"too large: 3 frame\\(s\\) of {HEIGHT} x {WIDTH} pixels") as error:
        read_image(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- pydicom 2.4 (Slicer 5.8 and 5.10 bundle 2.4.4)

PYDICOM_24 = Path(__file__).resolve().parents[1] / ".venv" / "pydicom-2.4"  # scripts/test.sh installs it there
READ_WITH_PYDICOM_24 = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, pydicom
from BreastUSSegmentLib.dicomio import read_dicom
assert pydicom.__version__ == "2.4.4", pydicom.__version__
for path in sys.argv[2:]:
    image = read_dicom(path)
    np.save(path + ".npy", image.pixels)
    print(json.dumps([list(image.spacing), image.spacing_source, image.color]))
"""


@pytest.mark.skipif(not PYDICOM_24.is_dir(), reason="pydicom 2.4.4 not installed in .venv/pydicom-2.4 (scripts/test.sh)")
def test_the_reader_gives_the_same_pixels_and_spacing_with_pydicom_2_4(tmp_path):
    """Slicer 5.8 and 5.10 bundle pydicom 2.4.4: the reader imports there and reads what it reads with pydicom 3."""
    import json
    import subprocess
    import sys

    rgb = random_array((HEIGHT, WIDTH, 3), seed=9)
    pairs = np.repeat(random_array((HEIGHT, WIDTH // 2, 3), seed=10), 2, axis=1)
    ybr422 = convert_color_space(pairs, "RGB", "YBR_FULL")
    packed = np.empty((HEIGHT, WIDTH // 2, 4), np.uint8)
    packed[..., 0], packed[..., 1] = ybr422[:, 0::2, 0], ybr422[:, 1::2, 0]
    packed[..., 2], packed[..., 3] = ybr422[:, 0::2, 1], ybr422[:, 0::2, 2]
    palette = make_dataset(random_array((HEIGHT, WIDTH), high=4, seed=11), "PALETTE COLOR")
    for name, table in (("Red", [0, 65535, 0, 0]), ("Green", [0, 0, 65535, 30000]), ("Blue", [0, 0, 0, 65535])):
        setattr(palette, f"{name}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(palette, f"{name}PaletteColorLookupTableData", np.array(table, np.uint16).tobytes())
    datasets = {
        "mono2": make_dataset(random_array((HEIGHT, WIDTH)), PixelSpacing=[0.2, 0.3]),
        "mono1": make_dataset(random_array((HEIGHT, WIDTH), np.uint16, 4096), "MONOCHROME1", bits_stored=12),
        "rescaled": make_dataset(random_array((HEIGHT, WIDTH)), RescaleSlope=2.0, RescaleIntercept=-5.0),
        "clip": make_dataset(random_array((3, HEIGHT, WIDTH)), frames=3,
                             SequenceOfUltrasoundRegions=[ultrasound_region(0.01, 0.02)]),
        "rgb": make_dataset(rgb, "RGB"),
        "ybr": make_dataset(convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL"),
        "ybr422": make_dataset(pairs, "YBR_FULL_422", pixel_bytes=packed.tobytes()),
        "palette": palette,
        "deflated": make_dataset(random_array((HEIGHT, WIDTH)), transfer_syntax=DeflatedExplicitVRLittleEndian),
    }
    paths = [str(write(tmp_path / f"{name}.dcm", dataset)) for name, dataset in datasets.items()]
    result = subprocess.run([sys.executable, "-c", READ_WITH_PYDICOM_24, str(PYDICOM_24), *paths],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for path, line in zip(paths, result.stdout.splitlines()):
        expected = read_dicom(path)
        spacing, source, color = json.loads(line)
        assert (tuple(spacing), source, color) == (tuple(expected.spacing), expected.spacing_source, expected.color), path
        pixels = np.load(path + ".npy")
        assert pixels.shape == expected.pixels.shape and pixels.dtype == expected.pixels.dtype, path
        assert np.abs(pixels.astype(float) - expected.pixels).max() <= 1, path  # YBR conversions may round apart


def test_a_deflated_file_that_inflates_beyond_the_limit_is_refused_before_pydicom_reads_it(tmp_path, monkeypatch):
    """A deflate bomb: a small file with a large (here 2 MB of zeros) private element, in Deflated Explicit VR."""
    dataset = make_dataset(random_array((HEIGHT, WIDTH)), transfer_syntax=DeflatedExplicitVRLittleEndian)
    small = write(tmp_path / "small.dcm", dataset)
    dataset.add_new(0x00091010, "OB", b"\0" * 2_000_000)
    dataset.add_new(0x00090010, "LO", "BOMB")
    bomb = write(tmp_path / "bomb.dcm", dataset)
    assert bomb.stat().st_size < 20_000
    monkeypatch.setattr(dicomio, "MAX_INFLATED_BYTES", 1_000_000, raising=False)
    read = []
    monkeypatch.setattr(dicomio.pydicom, "dcmread", 
                        lambda *args, **kwargs: read.append(args) or dcmread(*args, **kwargs))
    with pytest.raises(ImageReadError, match="inflates to more than 1,000,000 bytes") as error:
        read_image(bomb)
    assert error.value.path == bomb and read == []
    bomb.rename(tmp_path / "bomb")  # recognised by content, without suffix, too
    with pytest.raises(ImageReadError, match="inflates to more than"):
        read_image(tmp_path / "bomb")
    assert read_image(small).pixels.shape == (HEIGHT, WIDTH)  # a deflated file within the limit reads
