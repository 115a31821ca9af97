"""Raw depth I/O: unit conversion, bit-exact 16-bit PNG round trip, named decode errors."""

import cv2
import numpy as np
import pytest

from n5k_hf.geometry.depth import (
    DEPTH_UNITS_PER_M,
    DepthDecodeError,
    decode_depth_png,
    depth_m_to_raw,
    depth_raw_to_m,
    encode_depth_png,
)


def test_raw_to_metres():
    depth_m = depth_raw_to_m(np.array([[0, 3590, 4000, 65535]], dtype=np.uint16))
    assert depth_m.dtype == np.float32
    assert np.isnan(depth_m[0, 0])
    np.testing.assert_allclose(depth_m[0, 1:], [0.359, 0.4, 6.5535], rtol=1e-7)
    assert DEPTH_UNITS_PER_M == 10_000
    with pytest.raises(TypeError, match="integer"):
        depth_raw_to_m(np.array([0.359]))


def test_metres_to_raw():
    raw = depth_m_to_raw(np.array([np.nan, 0.359, 0.35994, 0.35996, -0.1, 0.0, 7.0, np.inf, 0.00004]))
    assert raw.dtype == np.uint16
    # NaN/negative/0/inf -> 0, rounding to 0.1 mm, clipping at 65535, tiny positive depth kept as 1.
    np.testing.assert_array_equal(raw, [0, 3590, 3599, 3600, 0, 0, 65535, 0, 1])


def test_metres_raw_round_trip_within_half_a_unit():
    depth_m = np.random.default_rng(0).uniform(0.05, 0.4, size=(30, 40)).astype(np.float32)
    back_m = depth_raw_to_m(depth_m_to_raw(depth_m))
    assert np.abs(back_m - depth_m).max() <= 0.5 / DEPTH_UNITS_PER_M + 1e-7


def test_png_round_trip_is_bit_exact(tmp_path):
    raw = np.random.default_rng(1).integers(0, 65536, size=(48, 64), dtype=np.uint16)
    raw[0, :3] = [0, 1, 65535]
    data = encode_depth_png(raw)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_depth_png(data), raw)
    path = tmp_path / "depth_raw.png"
    path.write_bytes(data)
    decoded = decode_depth_png(path)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, raw)
    np.testing.assert_array_equal(decode_depth_png(str(path)), raw)


def test_decode_errors_name_the_file_and_reason(tmp_path):
    empty = tmp_path / "dish_1/depth_raw.png"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(DepthDecodeError, match=r"dish_1/depth_raw\.png") as error:
        decode_depth_png(empty)
    assert error.value.reason == "empty_file"

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(DepthDecodeError, match=r"garbage\.png") as error:
        decode_depth_png(garbage)
    assert error.value.reason == "decode_error"

    eight_bit = tmp_path / "depth_8bit.png"
    eight_bit.write_bytes(cv2.imencode(".png", np.full((4, 4), 7, dtype=np.uint8))[1].tobytes())
    with pytest.raises(DepthDecodeError, match=r"depth_8bit\.png") as error:
        decode_depth_png(eight_bit)
    assert error.value.reason == "not_16bit"

    colour16 = cv2.imencode(".png", np.zeros((4, 4, 3), dtype=np.uint16))[1].tobytes()
    with pytest.raises(DepthDecodeError, match="not_16bit") as error:
        decode_depth_png(colour16)
    assert error.value.reason == "not_16bit"
    assert isinstance(error.value, Exception)

    with pytest.raises(FileNotFoundError):
        decode_depth_png(tmp_path / "missing.png")


def test_encode_rejects_non_uint16():
    with pytest.raises(ValueError, match="uint16"):
        encode_depth_png(np.zeros((4, 4), dtype=np.float32))
