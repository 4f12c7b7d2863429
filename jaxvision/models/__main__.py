"""`python -m jaxvision.models NAME [--image_size=S] [--num_classes=K]`: model summary.

Prints parameters, GFLOPs per image and a per-module table of a registered model;
`python -m jaxvision.models --pretrained` lists the named pretrained checkpoints.
"""

import sys

from absl import app, flags

from jaxvision import command_line, exit_status
from jaxvision.models import names, pretrained_catalog
from jaxvision.models.summary import format_summary, summarize

FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Input side in pixels (default: the model's own).", flag_values=FLAGS
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", 1000, "Classes of the head.", lower_bound=1, flag_values=FLAGS
)

_PRETRAINED = flags.DEFINE_bool(
    "pretrained", False, "List the catalog of named pretrained checkpoints.", flag_values=FLAGS
)


def _summarize(args: list[str]) -> None:
    if _PRETRAINED.value:
        if args:
            raise app.UsageError("--pretrained lists the catalog; give no model name with it.")
        print(pretrained_catalog.format_table())
        return
    if len(args) != 1:
        raise app.UsageError("Give one model name, e.g. vit_b16 or resnet50.")
    if args[0] not in names():
        raise exit_status.BadInputError(
            f"unknown model name {args[0]!r}. Known models: {', '.join(names())}"
        )
    summary = summarize(args[0], num_classes=_NUM_CLASSES.value, image_size=_IMAGE_SIZE.value)
    print(format_summary(summary))


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.models", __doc__, FLAGS, _summarize, argv)


if __name__ == "__main__":
    sys.exit(main())
