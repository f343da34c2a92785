import numpy as np
import pytest
from conftest import reference_image_processor
from PIL import Image

from unite_search.errors import InputError
from unite_search.image import fetch_resize, load_image, preprocess_image, smart_resize
from unite_search.settings import EncoderSettings

SETTINGS = EncoderSettings()


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_awkward(root, kind):
    """Write one awkward image file; return its path."""
    path = root / f"{kind}.png"
    if kind == "28x28":
        Image.fromarray(_noise(28, 28)).save(path)
    elif kind == "37x1000":
        Image.fromarray(_noise(1000, 37)).save(path)
    elif kind == "4000x3000":
        path = root / "big.jpg"
        yy, xx = np.mgrid[0:3000, 0:4000]
        arr = np.stack([xx % 256, yy % 256, (xx // 7 + yy // 5) % 256], -1).astype(np.uint8)
        Image.fromarray(arr).save(path, quality=90)
    elif kind == "grayscale":
        Image.fromarray(_noise(300, 200)[..., 0], "L").save(path)
    elif kind == "palette":
        Image.fromarray(_noise(120, 333)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "rgba":
        rgba = np.concatenate([_noise(250, 260), _noise(250, 260, 1)[..., :1]], -1)
        Image.fromarray(rgba, "RGBA").save(path)
    elif kind == "16bit":
        Image.fromarray((np.random.default_rng(3).integers(0, 65536, (210, 190))).astype(np.uint16)).save(path)
    elif kind == "exif-rotated":
        path = root / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        Image.fromarray(_noise(200, 500)).save(path, exif=exif, quality=95)
    elif kind == "cmyk":
        path = root / "cmyk.jpg"
        Image.fromarray(_noise(100, 150)).convert("CMYK").save(path)
    return path


KINDS = ["28x28", "37x1000", "4000x3000", "grayscale", "palette", "rgba", "16bit", "exif-rotated", "cmyk"]


@pytest.mark.parametrize("kind", KINDS)
def test_preprocessing_matches_transformers_reference(tmp_path, kind):
    path = _save_awkward(tmp_path, kind)
    reference = reference_image_processor(SETTINGS.min_pixels, SETTINGS.max_pixels)
    stage1 = fetch_resize(load_image(path), SETTINGS)
    expected = reference(images=[stage1], return_tensors="np")
    ours = preprocess_image(path, SETTINGS)
    assert ours.grid_thw == tuple(expected["image_grid_thw"][0])
    assert ours.pixel_values.dtype == np.float32 and ours.pixel_values.flags["C_CONTIGUOUS"]
    assert ours.pixel_values.shape == expected["pixel_values"].shape
    assert np.abs(ours.pixel_values - expected["pixel_values"]).max() <= 1e-5
    t, h, w = ours.grid_thw
    assert ours.tokens == t * h * w // 4 and 256 <= ours.tokens <= 1280


def test_both_resizes_happen():
    # 37x1000 is first rounded to 28x1008 (stage 1), then raised to UNITE's minimum (stage 2)
    img = load_image(_noise(1000, 37))
    assert fetch_resize(img, SETTINGS).size == (28, 1008)
    assert preprocess_image(img, SETTINGS).grid_thw == (1, 192, 6)


def test_exif_orientation_is_applied(tmp_path):
    img = load_image(_save_awkward(tmp_path, "exif-rotated"))
    assert img.size == (200, 500)  # stored 500 wide x 200 high, shown rotated


def test_mode_conversions_look_like_a_viewer(tmp_path):
    gray = load_image(_save_awkward(tmp_path, "grayscale"))
    arr = np.asarray(gray)
    assert gray.mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    sixteen = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    assert np.asarray(load_image(sixteen))[0, :, 0].tolist() == [0, 128, 255]
    assert load_image(_save_awkward(tmp_path, "cmyk")).mode == "RGB"


@pytest.mark.parametrize(
    ("h", "w", "lo", "hi", "expected"),
    [
        (28, 28, 4 * 784, 16384 * 784, (56, 56)),
        (30, 40, 4 * 784, 16384 * 784, (56, 84)),
        (300, 200, 4 * 784, 16384 * 784, (308, 196)),
        (1000, 37, 4 * 784, 16384 * 784, (1008, 28)),
        (28, 28, 256 * 784, 1280 * 784, (448, 448)),
        (3000, 4000, 256 * 784, 1280 * 784, (840, 1148)),
        (10, 10, 1, 10**9, (28, 28)),
    ],
)
def test_smart_resize_cases(h, w, lo, hi, expected):
    out = smart_resize(h, w, lo, hi)
    assert out == expected
    assert out[0] % 28 == 0 and out[1] % 28 == 0


def test_extreme_aspect_ratio_is_a_clear_error():
    with pytest.raises(InputError, match="aspect ratio"):
        preprocess_image(np.zeros((2, 500, 3), np.uint8), SETTINGS)


def test_bad_image_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(InputError, match=r"junk\.jpg: not an image: its content is text"):  # not "damaged"
        load_image(tmp_path / "junk.jpg")
    good = tmp_path / "good.jpg"
    Image.fromarray(_noise(300, 300)).save(good)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:400])
    with pytest.raises(InputError, match=r"cut\.jpg"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError):
        load_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (400, 400)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # 400x400 is then over twice the limit
    with pytest.raises(InputError, match="too large"):
        load_image(path)


def test_16_bit_and_float_pixels_take_the_same_8_bit_values_in_integer_arithmetic():
    """16-bit images were scaled through float64 copies (2.6x the memory the budget predicts for an image); the
    values are the rounded ones they were, rint(x / 257). A float image is converted as upstream converts it,
    clipped and truncated (it was rounded: half its pixels a level off)."""
    from unite_search.image import to_rgb

    rng = np.random.default_rng(0)
    sixteen = rng.integers(0, 65536, (64, 80)).astype(np.uint16)
    sixteen[1, :80] = np.arange(80) * 257 + 128  # the halfway points of each step
    wide = rng.integers(-70000, 70000, (64, 80)).astype(np.int32)
    floats = rng.normal(128, 100, (64, 80)).astype(np.float32)
    cases = [(Image.fromarray(sixteen), np.rint(sixteen / 257.0)),
             (Image.fromarray(wide, "I"), np.rint(wide / 257.0)),
             (Image.fromarray(floats, "F"), np.trunc(np.clip(floats, 0, 255)))]  # fmt: skip
    for img, want in cases:
        got = np.asarray(to_rgb(img))
        assert got.shape == (64, 80, 3) and (got[..., 0] == got[..., 2]).all()
        np.testing.assert_array_equal(got[..., 0], np.clip(want, 0, 255).astype(np.uint8), err_msg=img.mode)


def test_a_png_whose_data_fails_its_checksum_is_a_damaged_image(tmp_path, encoder):
    """Pillow checks no CRC of a PNG's image data: one flipped bit decoded to other pixels without a word (18%
    of single-bit flips), in ingest, queries and uploads alike."""
    import zlib

    from unite_search.image import DAMAGED_PNG
    from unite_search.ingestion import ingest

    yy, xx = np.mgrid[0:60, 0:80]
    good = tmp_path / "corpus" / "good.png"
    good.parent.mkdir()
    Image.fromarray(np.stack([xx * 3, yy * 4, xx + yy], -1).astype(np.uint8)).save(good)
    raw = good.read_bytes()
    at = raw.index(b"IDAT") + 4
    flipped = None
    for offset in range(2, 400):  # a flip the decoder takes without complaint
        data = bytearray(raw)
        data[at + offset] ^= 0x04
        candidate = tmp_path / "probe.png"
        candidate.write_bytes(bytes(data))
        try:
            with Image.open(candidate) as img:
                img.load()
        except (OSError, zlib.error):
            continue
        flipped = bytes(data)
        break
    assert flipped is not None
    bad = tmp_path / "corpus" / "bad.png"
    bad.write_bytes(flipped)
    with pytest.raises(InputError, match=r"damaged image \(a PNG chunk fails its checksum\)") as caught:
        load_image(str(bad))
    assert caught.value.detail == "the IDAT chunk's CRC does not match its bytes"
    assert load_image(str(good)).size == (80, 60)
    report = ingest(tmp_path / "corpus", tmp_path / "index", encoder=encoder)
    assert [(f.path, f.reason) for f in report.failures] == [("bad.png", DAMAGED_PNG)]


def test_a_pil_image_that_cannot_be_read_or_converted_is_bad_input(tmp_path):
    """A PIL image opened lazily from a truncated file, or in a mode with no conversion to RGB, raised Pillow's
    own OSError or ValueError out of a query."""
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated image"):
        load_image(Image.open(cut))
    with pytest.raises(InputError, match="PIL mode La cannot be converted to RGB"):
        load_image(Image.new("La", (8, 8)))
    closed = Image.open(whole)
    closed.close()
    with pytest.raises(InputError, match="the PIL image was closed before it was read"):
        load_image(closed)
    assert load_image(Image.open(whole)).size == (300, 200)
