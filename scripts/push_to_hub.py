"""Upload a fine-tuned model folder (config.json, weights, README.md) to the Hugging Face Hub.

Usage: python scripts/push_to_hub.py MODEL_DIR REPO_ID [--private] [--dry-run]

Checkpoints, optimizer/scheduler states and logs are never uploaded. The token comes from
``HF_TOKEN`` or ``hf auth login``; this script takes none on its command line.
"""

from __future__ import annotations

import argparse
import sys

from n5k_hf.hub.upload import ModelFolderError, check_model_folder, push_model_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_dir", help="folder written by save_pretrained, with README.md (the model card)"
    )
    parser.add_argument("repo_id", help="model repo, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the files that would upload, upload nothing"
    )
    args = parser.parse_args(argv)
    try:
        files = check_model_folder(args.model_dir)
    except ModelFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(files))
        return 0
    url = push_model_folder(args.model_dir, args.repo_id, private=args.private)
    print(f"uploaded {len(files)} files to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
