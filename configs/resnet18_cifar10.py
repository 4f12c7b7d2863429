"""ResNet-18 (CIFAR stem: 3x3 conv, no max-pool) on CIFAR-10, the standard SGD recipe.

Run:    python -m jaxvision.main --config=configs/resnet18_cifar10.py --workdir=runs/r18_c10
        (tfds downloads cifar10 on first use: add --config.dataset.download=True)
Test:   python -m jaxvision.evaluate --workdir=runs/r18_c10 --split=test
Smoke:  python -m jaxvision.main --config=configs/resnet18_cifar10.py:smoke --workdir=/tmp/r18
        20 steps on offline shapes, about a minute on 2 CPU cores; about 17% accuracy
        (chance 10%): it checks that the config runs, not that it learns.
Shapes: python -m jaxvision.main --config=configs/resnet18_cifar10.py:shapes --workdir=/tmp/rs
        the smoke net (width 1/4) on 6-class 32px shapes, 600 steps: 100% test accuracy
        (1,000 images) at steps 300 and 600, 640 s on 2 CPU cores shared with other jobs
        (AVX-512); the ResNet of docs/compression.md's shapes table.
Anchor: ResNet-18 with this recipe (SGD 0.1, momentum 0.9, wd 5e-4, 200 epochs, cosine,
        crop + flip) is published at about 95% CIFAR-10 test accuracy (e.g. the widely
        used kuangliu/pytorch-cifar table: 95.4%). Not measured here (needs the download).
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """ResNet-18 CIFAR-10 recipe; arg "smoke" shrinks it to a width-1/4 net on shapes, arg
    "shapes" trains that net on offline 6-class shapes (the compression table's ResNet)."""
    args = (arg or "").split(",")
    c = config_lib.base()
    c.model = config_lib.model("resnet18", stem="cifar")
    c.dataset.name = "cifar10"
    c.batch_size = 128
    c.num_epochs = 200.0
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 1.0
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    if "smoke" in args:
        c.model = config_lib.model("resnet18", stem="cifar", width=0.25)
    if "shapes" in args:
        _small_resnet_on_shapes(c)
    return config_lib.finalize(c, arg)


def _small_resnet_on_shapes(c) -> None:
    """A width-1/4 ResNet-18 on 6-class 32px `shapes`: the same recipe, 600 steps."""
    c.model = config_lib.model("resnet18", stem="cifar", width=0.25)
    c.dataset.name = "shapes"
    c.dataset.num_classes = 6
    c.dataset.image_size = 32
    c.dataset.train_pp = ""  # the catalog's: decode, resize, flip, value range
    c.num_train_steps = 600
    c.schedule.warmup_epochs = 0.0
    c.schedule.warmup_steps = 30
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
