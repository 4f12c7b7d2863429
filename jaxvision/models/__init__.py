"""Model zoo: `create(name, num_classes=...)` and `names()`; importing registers every family.

`create(name, pretrained=SOURCE)` returns the model and its pretrained variables (see
`pretrained_source` for the sources and `pretrained_catalog` for the named checkpoints).
"""

from jaxvision.models import cnn, resnet, resnet_v2, vit  # noqa: F401  (importing registers their names)
from jaxvision.models.pretrained import load_pretrained
from jaxvision.models.pretrained_source import create
from jaxvision.models.registry import names, register

__all__ = ["create", "load_pretrained", "names", "register"]
