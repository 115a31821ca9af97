"""Geometry in numpy: intrinsics, raw depth I/O, table plane fitting, volume integration.

The batched, differentiable torch versions live in `n5k_hf.geometry.torch_ops`, which this package
does not import (it needs torch; import it explicitly).
"""

from n5k_hf.geometry.depth import (
    DEPTH_UNITS_PER_M,
    DepthDecodeError,
    decode_depth_png,
    depth_m_to_raw,
    depth_raw_to_m,
    encode_depth_png,
)
from n5k_hf.geometry.intrinsics import (
    NUTRITION5K_CAMERA_HEIGHT_M,
    NUTRITION5K_FOCAL_PX,
    NUTRITION5K_IMAGE_HW,
    crop_intrinsics,
    hflip_intrinsics,
    intrinsics_from_35mm_focal,
    intrinsics_from_fov,
    nutrition5k_intrinsics,
    resize_intrinsics,
    rot90_intrinsics,
    vflip_intrinsics,
)
from n5k_hf.geometry.plane import Plane, backproject, fit_table_plane, height_above_plane_m, table_ring_mask
from n5k_hf.geometry.volume import (
    VOLUME_METHODS,
    ItemMeasurement,
    fill_invalid_depth,
    integrate_volume_ml,
    measure_food_item,
)

__all__ = [
    "DEPTH_UNITS_PER_M",
    "NUTRITION5K_CAMERA_HEIGHT_M",
    "NUTRITION5K_FOCAL_PX",
    "NUTRITION5K_IMAGE_HW",
    "VOLUME_METHODS",
    "DepthDecodeError",
    "ItemMeasurement",
    "Plane",
    "backproject",
    "crop_intrinsics",
    "decode_depth_png",
    "depth_m_to_raw",
    "depth_raw_to_m",
    "encode_depth_png",
    "fill_invalid_depth",
    "fit_table_plane",
    "height_above_plane_m",
    "hflip_intrinsics",
    "integrate_volume_ml",
    "intrinsics_from_35mm_focal",
    "intrinsics_from_fov",
    "measure_food_item",
    "nutrition5k_intrinsics",
    "resize_intrinsics",
    "rot90_intrinsics",
    "table_ring_mask",
    "vflip_intrinsics",
]
