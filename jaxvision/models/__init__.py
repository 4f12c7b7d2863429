"""Model zoo: `create(name, num_classes=...)` and `names()`; importing registers every family."""

from jaxvision.models import cnn, resnet, vit  # noqa: F401  (importing registers their names)
from jaxvision.models.pretrained import load_pretrained
from jaxvision.models.registry import create, names, register

__all__ = ["create", "load_pretrained", "names", "register"]
