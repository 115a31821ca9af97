"""Geometry in numpy: intrinsics, raw depth I/O, table plane fitting, volume integration.

The batched, differentiable torch versions live in `n5k_hf.geometry.torch_ops`, which this package
does not import (it needs torch; import it explicitly).
"""

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

__all__ = [
    "NUTRITION5K_CAMERA_HEIGHT_M",
    "NUTRITION5K_FOCAL_PX",
    "NUTRITION5K_IMAGE_HW",
    "crop_intrinsics",
    "hflip_intrinsics",
    "intrinsics_from_35mm_focal",
    "intrinsics_from_fov",
    "nutrition5k_intrinsics",
    "resize_intrinsics",
    "rot90_intrinsics",
    "vflip_intrinsics",
]
