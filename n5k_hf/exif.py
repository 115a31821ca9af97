"""Camera facts from a photo's EXIF: the 35 mm-equivalent focal length.

``FocalLengthIn35mmFilm`` (tag 0xA405) lives in the Exif sub-IFD (pointer tag 0x8769); some writers
put it in the main IFD, so both are read. The value 0 means "unknown" in the EXIF standard. The
plain ``FocalLength`` (0x920A) is the lens focal length in mm and needs the sensor size, which
EXIF does not reliably hold, so it is not used.
"""

from __future__ import annotations

import math

from PIL import Image

EXIF_IFD_POINTER_TAG = 0x8769
FOCAL_LENGTH_IN_35MM_FILM_TAG = 0xA405


def focal_length_35mm(image: Image.Image) -> float | None:
    """The EXIF ``FocalLengthIn35mmFilm`` of an opened image in millimetres, or None when absent or 0."""
    exif = image.getexif()
    value = exif.get_ifd(EXIF_IFD_POINTER_TAG).get(FOCAL_LENGTH_IN_35MM_FILM_TAG)
    if value is None:
        value = exif.get(FOCAL_LENGTH_IN_35MM_FILM_TAG)
    try:
        focal_mm = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    if focal_mm is None or not math.isfinite(focal_mm) or focal_mm <= 0:
        return None
    return focal_mm
