"""`python -m jaxvision.models NAME [--image-size S] [--num-classes K]`: model summary."""

import argparse
import sys

from jaxvision.models import names
from jaxvision.models.summary import format_summary, summarize


def main(argv: list[str] | None = None) -> int:
    """Prints parameters, GFLOPs and a per-module table; exit code 2 on a bad name or size."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxvision.models",
        description="Summarise a registered model: parameters, GFLOPs per image, modules.",
    )
    parser.add_argument("name", help="a registered model name, e.g. vit_b16 or resnet50")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.name not in names():
        print(
            f"error: unknown model name {args.name!r}. Known models: {', '.join(names())}",
            file=sys.stderr,
        )
        return 2
    try:
        summary = summarize(args.name, num_classes=args.num_classes, image_size=args.image_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
