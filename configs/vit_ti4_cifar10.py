"""ViT-Ti/4 (64 tokens of 4x4 patches) on CIFAR-10 from scratch.

Run:    python -m jaxvision.main --config=configs/vit_ti4_cifar10.py --workdir=runs/vit_ti4
        (tfds downloads cifar10 on first use: add --config.dataset.download=True)
Test:   python -m jaxvision.evaluate --workdir=runs/vit_ti4 --split=test
Smoke:  python -m jaxvision.main --config=configs/vit_ti4_cifar10.py:smoke --workdir=/tmp/vt
Expect: not measured yet: this project's machines cannot download CIFAR-10.
        The architecture matches the PyTorch reference the benchmark compares against
        (pre-LN, learned posemb, global average pooling).
        Smoke: 55 s for the smoke command (20 steps on offline shapes, dataset already
        prepared; 2 CPU cores shared with ~4 other jobs).
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """ViT-Ti/4 CIFAR-10 recipe: AdamW, RandAugment, mixup, label smoothing."""
    args = (arg or "").split(",")
    c = config_lib.base()
    c.model = config_lib.model("vit_ti4", image_size=32, pool="gap", drop_path=0.1)
    c.dataset.name = "cifar10"
    c.dataset.train_pp = "decode|random_crop(32,4)|flip_lr|randaugment(2,9)|normalize(cifar10)"
    c.batch_size = 256
    c.num_epochs = 300.0
    c.label_smoothing = 0.1
    c.mixup.mixup_alpha = 0.2
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 10.0
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    if "smoke" in args:
        c.model = config_lib.model("vit_ti4", image_size=32, pool="gap", depth=2)
    return config_lib.finalize(c, arg)
