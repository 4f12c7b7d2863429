"""ResNet-18 (CIFAR stem: 3x3 conv, no max-pool) on CIFAR-10, the standard SGD recipe.

Run:    python -m jaxvision.main --config=configs/resnet18_cifar10.py --workdir=runs/r18_c10
        (tfds downloads cifar10 on first use: add --config.dataset.download=True)
Test:   python -m jaxvision.evaluate --workdir=runs/r18_c10 --split=test
Smoke:  python -m jaxvision.main --config=configs/resnet18_cifar10.py:smoke --workdir=/tmp/r18
Anchor: ResNet-18 with this recipe (SGD 0.1, momentum 0.9, wd 5e-4, 200 epochs, cosine,
        crop + flip) is published at about 95% CIFAR-10 test accuracy (e.g. the widely
        used kuangliu/pytorch-cifar table: 95.4%). Not measured here: no download on this
        machine.
        Smoke: 57 s for the smoke command (20 steps on offline shapes, dataset already
        prepared; 2 CPU cores shared with ~4 other jobs). Under `nice -n 19` (2026-11-24):
        30 s with the cores nearly idle (load average ~2), 58 s with them busy (load ~5;
        97 s before the state init was compiled without XLA's slow optimisation). Ends at 17.5%
        (chance 10%; shapes v2, 2026-11-24): 20 steps check that the config runs, not that it
        learns (docs/models_on_shapes.md).
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """ResNet-18 CIFAR-10 recipe; arg "smoke" shrinks it to a width-1/4 net on shapes."""
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
    return config_lib.finalize(c, arg)
