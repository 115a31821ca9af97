"""Food volume in mL per item on photos, from a Depth Anything V2 Metric model and food masks.

Example::

    python scripts/predict_volume.py --model outputs/finetune plate.jpg --masks plate_mask.png \\
        [--fx 465.14 --fy 465.14 | --fov-deg 69] [--output volumes.json] [--save-depth depth_dir]

Items: one mask for an image = one item per label value (label image) or per connected piece
(binary mask); several masks for one image = one item per file; one mask per image when several
images are given; no masks = food found in the predicted depth. K: --fx/--fy or --fov-deg, else
the EXIF 35 mm-equivalent focal length, else the Nutrition5k camera (with a warning). See
``n5k_hf.prediction``. Prints the JSON (or writes it to --output).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from n5k_hf.cli import exit_on_user_error
from n5k_hf.geometry.volume import VOLUME_METHODS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="fine-tuned model folder or Hub id of a DAV2-metric model"
    )
    parser.add_argument("--model-revision", default=None, help="Hub revision of --model")
    parser.add_argument("images", nargs="+", type=Path, help="photos (any size; EXIF orientation applied)")
    parser.add_argument("--masks", nargs="+", type=Path, default=[], help="food mask PNGs (see above)")
    parser.add_argument("--fx", type=float, default=None, help="focal length along x in pixels of the image")
    parser.add_argument("--fy", type=float, default=None, help="focal length along y in pixels of the image")
    parser.add_argument("--fov-deg", type=float, default=None, help="horizontal field of view in degrees")
    parser.add_argument(
        "--integrator",
        default="heightmap",
        choices=sorted(VOLUME_METHODS),
        help="volume integrator (default: heightmap)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="write the JSON here instead of printing it"
    )
    parser.add_argument(
        "--save-depth", type=Path, default=None, help="folder for 16-bit depth PNGs (1e-4 m units)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from n5k_hf.prediction import DepthPredictor, prepare_prediction, run_prediction

    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    job = prepare_prediction(  # every input checked before the model is loaded
        args.images,
        mask_paths=args.masks,
        fx_px=args.fx,
        fy_px=args.fy,
        fov_deg=args.fov_deg,
        integrator=args.integrator,
        save_depth_dir=args.save_depth,
    )
    result = run_prediction(job, DepthPredictor.from_pretrained(args.model, revision=args.model_revision))
    text = json.dumps({"model": args.model, **result}, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    for image in result["images"]:
        volumes = ", ".join(f"{item['volume_ml']:.1f}" for item in image["items"]) or "no item"
        print(f"{image['image']}: {volumes} mL (K from {image['K_source']})")


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
