"""Convert an official Depth Anything V2 metric checkpoint (.pth) to a Hugging Face model folder.

    python scripts/convert_official_checkpoint.py --checkpoint depth_anything_v2_metric_hypersim_vitl.pth \\
        --encoder vitl --max-depth 20 --output-dir outputs/dav2-metric-indoor-large

The folder loads with ``DepthAnythingForDepthEstimation.from_pretrained`` and
``pipeline("depth-estimation", model=...)``. Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys

from n5k_hf.official_checkpoint import ENCODER_SIZES, OfficialCheckpointError, convert_official_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="Official metric_depth .pth file.")
    parser.add_argument(
        "--encoder", required=True, help=f"Encoder of the checkpoint: one of {', '.join(ENCODER_SIZES)}."
    )
    parser.add_argument(
        "--max-depth",
        type=float,
        default=20,
        help="Metric head range in metres, a whole number: 20 for the indoor (Hypersim) models, 80 for outdoor.",
    )
    parser.add_argument("--output-dir", required=True, help="Folder to write the Hugging Face model into.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        output_dir = convert_official_checkpoint(
            args.checkpoint, args.encoder, args.output_dir, max_depth=args.max_depth
        )
    except (OfficialCheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"saved {args.encoder} DAV2-metric (max_depth {int(args.max_depth)} m) to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
