"""Bad images and prompts get a clear InputError; odd but valid images are normalised."""
import io

import numpy as np
import pytest
from PIL import Image

from safety_demo.inputs import InputError, Limits, add_gaussian_noise, clean_prompt, load_image


def _png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_non_image_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(path)


def test_truncated_png(tmp_path):
    data = _png_bytes(Image.new("RGB", (200, 200), "red").resize((200, 200)))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = _png_bytes(noisy)
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="could not be decoded"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # tiny file, 400 megapixels
    with pytest.raises(InputError, match="too large|limit"):
        load_image(path)


def test_big_image_is_downscaled():
    image = load_image(Image.new("RGB", (4000, 3000), "blue"), Limits(max_image_side=1024))
    assert max(image.size) == 1024 and image.mode == "RGB"


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    image = load_image(_png_bytes(Image.new("RGB", (10, 10), "green").convert(mode), "TIFF" if mode == "CMYK" else "PNG"))
    assert image.mode == "RGB" and image.size == (10, 10)


def test_transparent_areas_become_white():
    image = load_image(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_one_pixel_image():
    assert load_image(Image.new("RGB", (1, 1))).size == (1, 1)


def test_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    image = load_image(buf.getvalue())
    assert image.getpixel((0, 0))[0] > 200


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    loaded = load_image(_png_bytes(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (10, 20)


@pytest.mark.parametrize("prompt", ["", "   \n\t ", None, "\x00\x01"])
def test_empty_prompts(prompt):
    with pytest.raises(InputError, match="empty"):
        clean_prompt(prompt)


def test_huge_prompt_is_refused_with_the_limit():
    with pytest.raises(InputError, match="100,000 characters"):
        clean_prompt("a" * 100_000)


def test_control_characters_stripped_rtl_kept():
    assert clean_prompt("hi\x07 there\x1b") == "hi there"
    assert clean_prompt("  מה יש בתמונה?  ") == "מה יש בתמונה?"


def test_noise_is_seeded_and_clipped():
    image = Image.new("RGB", (16, 16), (128, 128, 128))
    a, b = add_gaussian_noise(image, 0.1, seed=3), add_gaussian_noise(image, 0.1, seed=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    diff = np.asarray(a, dtype=float) - 128
    assert 15 < diff.std() < 35  # σ = 0.1 of 255 ≈ 25.5
    white = np.asarray(add_gaussian_noise(Image.new("RGB", (16, 16), "white"), 0.1, seed=0))
    assert white.max() == 255 and white.min() < 255


def test_invisible_and_direction_changing_characters_are_stripped_and_counted():
    from safety_demo.inputs import invisible_count

    raw = "How\u202e do\u200b I\u200d bake\tbread?\n"
    assert clean_prompt(raw) == "How do I bake\tbread?" and invisible_count(raw) == 3


def test_prompt_tokens_have_their_own_limit():
    from safety_demo.inputs import check_prompt_tokens

    check_prompt_tokens(10, Limits(max_prompt_tokens=10))
    with pytest.raises(InputError, match="11 tokens for this model; the limit is 10"):
        check_prompt_tokens(11, Limits(max_prompt_tokens=10))


def test_echoed_values_are_bounded():
    from safety_demo.inputs import shown

    assert len(shown("x" * 100_000)) == 80 and shown("ok") == "'ok'"
