"""Model zoo: `create(name, num_classes=...)` and `names()`; importing registers every family."""

from jaxvision.models import cnn  # noqa: F401  (registers its names)
from jaxvision.models.registry import create, names, register

__all__ = ["create", "names", "register"]
