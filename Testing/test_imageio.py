"""Reading and writing images: Pillow formats, SimpleITK formats, bad input, round trips, pipeline feed."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from BreastUSSegmentLib import imagetypes
from BreastUSSegmentLib.imageio import ImageReadError, ImageWriteError, LoadedImage, read_image, write_image

HEIGHT, WIDTH = 20, 28


def random_array(shape, dtype=np.uint8, high=256, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def smooth_rgb(height=HEIGHT, width=WIDTH):
    """A gradient colour image that survives JPEG compression nearly unchanged."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([rows * 8, columns * 6, 255 - rows * 4 - columns * 3], axis=-1).astype(np.uint8)


def write_sitk(path, array, spacing, is_vector=False):
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


# ---------------------------------------------------------------- Pillow formats


def test_png_gray_reads_exact_pixels(tmp_path):
    pixels = random_array((HEIGHT, WIDTH))
    Image.fromarray(pixels).save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, pixels)
    assert not image.color
    assert image.spacing == (1.0, 1.0) and image.spacing_source == "unknown"
    assert image.frame_count == 1 and image.frame_shape == (HEIGHT, WIDTH)
    assert image.path == tmp_path / "gray.png"


def test_png_rgb_and_rgba_keep_their_channels(tmp_path):
    rgb = random_array((HEIGHT, WIDTH, 3), seed=1)
    rgba = random_array((HEIGHT, WIDTH, 4), seed=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    read_rgb, read_rgba = read_image(tmp_path / "rgb.png"), read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb.pixels, rgb)
    np.testing.assert_array_equal(read_rgba.pixels, rgba)
    assert read_rgb.color and read_rgba.color
    assert read_rgb.frame_shape == read_rgba.frame_shape == (HEIGHT, WIDTH)
    assert read_rgb.frame_count == read_rgba.frame_count == 1


def test_png_16_bit_stays_uint16(tmp_path):
    pixels = random_array((HEIGHT, WIDTH), np.uint16, high=65536)
    assert pixels.max() > 255
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, pixels)


def test_one_bit_png_reads_as_uint8_0_and_255(tmp_path):
    bits = random_array((HEIGHT, WIDTH), bool, high=2)
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as stored:
        assert stored.mode == "1"
    image = read_image(tmp_path / "bits.png")
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, bits.astype(np.uint8) * 255)


def test_palette_png_becomes_rgb(tmp_path):
    indices = random_array((HEIGHT, WIDTH), high=4)
    palette = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250]], dtype=np.uint8)
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.ravel().tolist())
    paletted.save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert image.color and image.pixels.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image.pixels, palette[indices])


def test_gray_with_alpha_drops_the_alpha(tmp_path):
    gray = random_array((HEIGHT, WIDTH), seed=3)
    alpha = random_array((HEIGHT, WIDTH), seed=4)
    Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert not image.color
    np.testing.assert_array_equal(image.pixels, gray)


def test_jpeg_rgb_and_gray_read_close_to_the_original(tmp_path):
    rgb = smooth_rgb()
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.jpeg", quality=95)
    color, gray = read_image(tmp_path / "photo.jpg"), read_image(tmp_path / "gray.jpeg")
    assert color.color and color.pixels.shape == (HEIGHT, WIDTH, 3) and color.pixels.dtype == np.uint8
    assert not gray.color and gray.pixels.shape == (HEIGHT, WIDTH)
    assert np.abs(color.pixels.astype(int) - rgb).mean() < 4
    assert np.abs(gray.pixels.astype(int) - rgb[..., 0]).mean() < 4


def test_jpeg_exif_orientation_is_applied(tmp_path):
    rgb = smooth_rgb()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.frame_shape == (WIDTH, HEIGHT)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(image.pixels.astype(int) - expected).mean() < 4


def test_bmp_rgb_is_exact(tmp_path):
    rgb = random_array((HEIGHT, WIDTH, 3), seed=5)
    Image.fromarray(rgb).save(tmp_path / "screen.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "screen.bmp").pixels, rgb)


def test_multipage_tiff_reads_as_frames(tmp_path):
    frames = [random_array((HEIGHT, WIDTH), seed=seed) for seed in range(3)]
    pages = [Image.fromarray(frame) for frame in frames]
    pages[0].save(tmp_path / "clip.tif", save_all=True, append_images=pages[1:])
    image = read_image(tmp_path / "clip.tif")
    assert image.pixels.shape == (3, HEIGHT, WIDTH) and not image.color
    assert image.frame_count == 3 and image.frame_shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(image.pixels, np.stack(frames))


def test_multipage_rgb_tiff_reads_as_colour_frames(tmp_path):
    frames = [random_array((HEIGHT, WIDTH, 3), seed=seed) for seed in range(2)]
    pages = [Image.fromarray(frame) for frame in frames]
    pages[0].save(tmp_path / "clip.tiff", save_all=True, append_images=pages[1:])
    image = read_image(tmp_path / "clip.tiff")
    assert image.color and image.pixels.shape == (2, HEIGHT, WIDTH, 3)
    assert image.frame_count == 2 and image.frame_shape == (HEIGHT, WIDTH)


def test_float_tiff_keeps_float32(tmp_path):
    pixels = np.linspace(-1.5, 3.5, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    Image.fromarray(pixels, mode="F").save(tmp_path / "float.tif")
    image = read_image(tmp_path / "float.tif")
    assert image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, pixels)


def test_png_content_without_suffix_is_detected(tmp_path):
    pixels = random_array((HEIGHT, WIDTH), seed=6)
    Image.fromarray(pixels).save(tmp_path / "frame", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "frame").pixels, pixels)


# ---------------------------------------------------------------- SimpleITK formats


@pytest.mark.parametrize("name", ["frame.nrrd", "frame.nii", "frame.nii.gz", "frame.mha", "frame.mhd"])
def test_2d_header_formats_give_pixels_and_header_spacing(tmp_path, name):
    pixels = random_array((HEIGHT, WIDTH), np.int16, high=3000)
    write_sitk(tmp_path / name, pixels, spacing=(0.25, 0.5))  # (x = column, y = row)
    image = read_image(tmp_path / name)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.pixels.dtype == np.int16 and not image.color
    assert image.spacing == pytest.approx((0.5, 0.25), rel=1e-6)
    assert image.spacing_source == "header"


def test_3d_volume_with_several_slices_is_a_clip(tmp_path):
    clip = random_array((4, HEIGHT, WIDTH))
    write_sitk(tmp_path / "clip.nrrd", clip, spacing=(0.2, 0.3, 1.0))
    image = read_image(tmp_path / "clip.nrrd")
    np.testing.assert_array_equal(image.pixels, clip)
    assert image.frame_count == 4 and image.frame_shape == (HEIGHT, WIDTH)
    assert image.spacing == pytest.approx((0.3, 0.2))


def test_3d_volume_with_one_slice_is_a_frame(tmp_path):
    frame = random_array((1, HEIGHT, WIDTH))
    write_sitk(tmp_path / "single.nii.gz", frame, spacing=(0.1, 0.1, 2.0))
    image = read_image(tmp_path / "single.nii.gz")
    assert image.pixels.shape == (HEIGHT, WIDTH) and image.frame_count == 1


def test_vector_pixels_are_colour(tmp_path):
    rgb = random_array((HEIGHT, WIDTH, 3), seed=7)
    clip = random_array((3, HEIGHT, WIDTH, 3), seed=8)
    write_sitk(tmp_path / "rgb.nrrd", rgb, spacing=(0.4, 0.4), is_vector=True)
    write_sitk(tmp_path / "clip.mha", clip, spacing=(0.4, 0.4, 1.0), is_vector=True)
    frame, colour_clip = read_image(tmp_path / "rgb.nrrd"), read_image(tmp_path / "clip.mha")
    assert frame.color and colour_clip.color
    np.testing.assert_array_equal(frame.pixels, rgb)
    np.testing.assert_array_equal(colour_clip.pixels, clip)
    assert frame.frame_count == 1 and colour_clip.frame_count == 3
    assert colour_clip.frame_shape == (HEIGHT, WIDTH)


# ---------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    """Files that must all be refused with an ImageReadError naming them."""
    files = {}
    files["missing"] = tmp_path / "missing.png"
    files["directory"] = tmp_path / "folder.png"
    files["directory"].mkdir()
    files["text as png"] = tmp_path / "notes.png"
    files["text as png"].write_text("this is not an image")
    files["text as nrrd"] = tmp_path / "notes.nrrd"
    files["text as nrrd"].write_text("this is not an image")
    files["text without suffix"] = tmp_path / "notes"
    files["text without suffix"].write_text("this is not an image either")
    files["empty file"] = tmp_path / "empty.png"
    files["empty file"].write_bytes(b"")
    files["unknown suffix"] = tmp_path / "frame.xyz"
    Image.fromarray(random_array((4, 4))).save(files["unknown suffix"], format="PNG")
    files["zero-size nrrd"] = tmp_path / "zero.nrrd"
    files["zero-size nrrd"].write_text("NRRD0004\ntype: uint8\ndimension: 2\nsizes: 0 5\nencoding: raw\n\n")
    files["4d"] = tmp_path / "four.nrrd"
    sitk.WriteImage(sitk.Image([3, 4, 5, 2], sitk.sitkUInt8), str(files["4d"]))
    files["2-component vectors"] = tmp_path / "field.nrrd"
    write_sitk(files["2-component vectors"], np.zeros((3, 4, 5, 2), np.float32), (1, 1, 1), is_vector=True)
    files["nan"] = tmp_path / "nan.tif"
    with_nan = np.ones((4, 4), np.float32)
    with_nan[1, 2] = np.nan
    Image.fromarray(with_nan, mode="F").save(files["nan"])
    files["inf"] = tmp_path / "inf.nrrd"
    with_inf = np.ones((4, 4), np.float32)
    with_inf[0, 0] = np.inf
    write_sitk(files["inf"], with_inf, (1, 1))
    files["mismatched pages"] = tmp_path / "pages.tif"
    Image.new("L", (8, 8)).save(files["mismatched pages"], save_all=True, append_images=[Image.new("L", (6, 8))])
    files["link loop"] = tmp_path / "loop.png"
    files["link loop"].symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(files["link loop"])
    files["broken link"] = tmp_path / "broken.png"
    files["broken link"].symlink_to(tmp_path / "moved.png")
    return files


BAD_INPUT_PROBLEMS = {
    "missing": "does not exist",
    "directory": "directory",
    "text as png": "not a readable image",
    "text as nrrd": "not a readable image",
    "text without suffix": "neither DICOM nor",
    "empty file": "empty",
    "unknown suffix": "unknown file type '.xyz'",
    "zero-size nrrd": "not a readable image",
    "4d": "4-D images are not supported",
    "2-component vectors": "2 components",
    "nan": "NaN or infinite",
    "inf": "NaN or infinite",
    "mismatched pages": "page 2",
    "link loop": "too many levels of symbolic links",
    "broken link": "the symbolic link points to",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_PROBLEMS))
def test_bad_input_raises_an_error_naming_the_file(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    assert str(path) in str(error.value)
    assert BAD_INPUT_PROBLEMS[case] in str(error.value)
    assert error.value.path == path
    assert isinstance(error.value, ValueError)


def test_loaded_image_frame_properties_follow_the_colour_flag():
    stack = np.zeros((5, 6, 3), np.uint8)
    assert LoadedImage(stack, (1.0, 1.0), "unknown", False, Path("x")).frame_count == 5
    assert LoadedImage(stack, (1.0, 1.0), "unknown", False, Path("x")).frame_shape == (6, 3)
    assert LoadedImage(stack, (1.0, 1.0), "unknown", True, Path("x")).frame_count == 1
    assert LoadedImage(stack, (1.0, 1.0), "unknown", True, Path("x")).frame_shape == (5, 6)


# ---------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
@pytest.mark.parametrize("frames", [None, 3])
def test_write_then_read_header_formats_keeps_pixels_and_spacing(tmp_path, suffix, frames):
    shape = (HEIGHT, WIDTH) if frames is None else (frames, HEIGHT, WIDTH)
    array = np.random.default_rng(9).random(shape).astype(np.float32)
    written = write_image(tmp_path / "out" / f"image{suffix}", array, spacing=(0.3, 0.15))
    assert written == tmp_path / "out" / f"image{suffix}" and written.is_file()
    image = read_image(written)
    np.testing.assert_array_equal(image.pixels, array)
    assert image.spacing == pytest.approx((0.3, 0.15), rel=1e-6)
    assert image.frame_count == (frames or 1)
    if frames:
        assert sitk.ReadImage(str(written)).GetSpacing()[2] == pytest.approx(1.0)


def test_write_bool_mask_to_nrrd_reads_back_as_0_and_1(tmp_path):
    mask = random_array((HEIGHT, WIDTH), bool, high=2, seed=10)
    image = read_image(write_image(tmp_path / "mask.nrrd", mask))
    np.testing.assert_array_equal(image.pixels, mask.astype(np.uint8))


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[True, False], [False, True]]), np.array([[255, 0], [0, 255]], np.uint8)),
        (np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), np.array([[0, 128], [255, 64]], np.uint8)),
        (np.array([[0, 17], [200, 255]], np.uint8), np.array([[0, 17], [200, 255]], np.uint8)),
        (np.array([[0, 1], [1, 0]], np.int64), np.array([[0, 1], [1, 0]], np.uint8)),
        (np.array([[0, 1000], [65535, 3]], np.uint16), np.array([[0, 1000], [65535, 3]], np.uint16)),
        (np.array([[[0, 9], [9, 0]]], np.uint8), np.array([[0, 9], [9, 0]], np.uint8)),
    ],
    ids=["bool", "float", "uint8", "int64-labels", "uint16", "single-frame-stack"],
)
def test_write_png_converts_types_as_documented(tmp_path, array, expected):
    image = read_image(write_image(tmp_path / "mask.png", array))
    assert image.pixels.dtype == expected.dtype
    np.testing.assert_array_equal(image.pixels, expected)


@pytest.mark.parametrize(
    ("name", "array", "problem"),
    [
        ("stack.png", np.zeros((2, 4, 4), np.uint8), "one frame"),
        ("frame.jpg", np.zeros((4, 4), np.uint8), "unknown suffix '.jpg'"),
        ("frame", np.zeros((4, 4), np.uint8), "unknown suffix"),
        ("float.png", np.full((4, 4), 1.5, np.float32), "[0, 1]"),
        ("negative.png", np.full((4, 4), -3, np.int16), "do not fit"),
        ("volume.nrrd", np.zeros((2, 2, 4, 4), np.uint8), "shape"),
        ("empty.nrrd", np.zeros((0, 4), np.uint8), "shape"),
        ("text.nrrd", np.array([["a", "b"], ["c", "d"]]), "unsupported array type"),
    ],
)
def test_write_refuses_bad_requests_with_the_file_named(tmp_path, name, array, problem):
    with pytest.raises(ImageWriteError) as error:
        write_image(tmp_path / name, array)
    assert str(tmp_path / name) in str(error.value) and problem in str(error.value)
    assert not (tmp_path / name).exists()


def test_write_refuses_non_positive_spacing(tmp_path):
    with pytest.raises(ImageWriteError, match="spacing"):
        write_image(tmp_path / "frame.nrrd", np.zeros((4, 4), np.uint8), spacing=(0.0, 1.0))


@pytest.mark.parametrize("name", ["frame.nrrd", "frame.nii.gz", "frame.png"])
def test_a_write_killed_midway_leaves_the_earlier_file_whole(tmp_path, monkeypatch, name):
    """The writer fails after writing part of the file (a kill or a full disk): the final name keeps the old file."""
    path = tmp_path / name
    write_image(path, np.zeros((4, 4), np.uint8))
    earlier = path.read_bytes()

    def write_half_then_fail(image, target, *args, **kwargs):
        Path(target).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_fail)
    monkeypatch.setattr(Image.Image, "save", lambda image, target, *args, **kwargs: write_half_then_fail(image, target))
    with pytest.raises(ImageWriteError, match="No space left on device") as error:
        write_image(path, np.ones((4, 4), np.uint8))
    assert str(path) in str(error.value)
    assert path.read_bytes() == earlier and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_exclusive_write_keeps_an_existing_image(tmp_path):
    path = write_image(tmp_path / "mask.nrrd", np.zeros((4, 4), np.uint8))
    earlier = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_image(path, np.ones((4, 4), np.uint8), exclusive=True)
    assert path.read_bytes() == earlier
    write_image(path, np.ones((4, 4), np.uint8))  # not exclusive: replaced
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).min() == 1


# ---------------------------------------------------------------- the size limit


def test_images_over_the_size_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(imagetypes, "MAX_INPUT_PIXELS", 1000)
    Image.fromarray(random_array((20, 50))).save(tmp_path / "at_limit.png")
    assert read_image(tmp_path / "at_limit.png").frame_shape == (20, 50)
    Image.fromarray(random_array((21, 50))).save(tmp_path / "over.png")
    write_sitk(tmp_path / "clip.nrrd", random_array((2, 20, 30)), (1.0, 1.0, 1.0))
    decoded = []
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda reader: decoded.append(reader))
    monkeypatch.setattr(Image.Image, "load", lambda image: decoded.append(image))
    for name, size in (("over.png", "1 frame(s) of 21 x 50 pixels is 1,050 pixels"),
                       ("clip.nrrd", "2 frame(s) of 20 x 30 pixels is 1,200 pixels")):
        with pytest.raises(ImageReadError, match="too large") as error:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(error.value) and f"{size}; the limit is 1,000" in str(error.value)
    assert decoded == []


@pytest.mark.parametrize("pixels", ["above Pillow's warning", "above Pillow's error"])
def test_a_huge_png_is_refused_with_one_clear_message_and_no_pillow_warning(tmp_path, pixels, recwarn):
    limit = Image.MAX_IMAGE_PIXELS
    width = 10_000
    height = (limit if pixels == "above Pillow's warning" else 2 * limit) // width + 10
    Image.new("1", (width, height)).save(tmp_path / "huge.png")  # 1 bit per pixel: a small file
    with pytest.raises(ImageReadError, match="too large") as error:
        read_image(tmp_path / "huge.png")
    assert f"the limit is {imagetypes.MAX_INPUT_PIXELS:,}" in str(error.value)
    assert not [warning for warning in recwarn if issubclass(warning.category, Image.DecompressionBombWarning)]


# ---------------------------------------------------------------- the images feed the pipeline


LAYOUTS = {
    "gray": lambda: Image.fromarray(random_array((HEIGHT, WIDTH), seed=11)),
    "rgb": lambda: Image.fromarray(random_array((HEIGHT, WIDTH, 3), seed=12)),
    "rgba": lambda: Image.fromarray(random_array((HEIGHT, WIDTH, 4), seed=13), mode="RGBA"),
    "16-bit": lambda: Image.fromarray(random_array((HEIGHT, WIDTH), np.uint16, high=65536, seed=14)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_read_images_feed_the_segmenter(tmp_path, tiny_segmenter, layout):
    LAYOUTS[layout]().save(tmp_path / f"{layout}.png")
    image = read_image(tmp_path / f"{layout}.png")
    result = tiny_segmenter.segment(image.pixels, color=image.color)
    expected = (image.frame_count, *image.frame_shape)
    assert expected == (1, HEIGHT, WIDTH)
    assert result.probability.shape == expected
    assert result.processed_mask.shape == expected
    assert result.combined_attention.shape == expected
