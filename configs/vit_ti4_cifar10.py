"""ViT-Ti/4 (64 tokens of 4x4 patches) on CIFAR-10 from scratch.

Run:    python -m jaxvision.main --config=configs/vit_ti4_cifar10.py --workdir=runs/vit_ti4
        (tfds downloads cifar10 on first use: add --config.dataset.download=True)
Test:   python -m jaxvision.evaluate --workdir=runs/vit_ti4 --split=test
Smoke:  python -m jaxvision.main --config=configs/vit_ti4_cifar10.py:smoke --workdir=/tmp/vt
        20 steps on offline shapes, about a minute on 2 CPU cores; about 18% accuracy
        (chance 10%): it checks that the config runs, not that it learns.
Shapes: python -m jaxvision.main --config=configs/vit_ti4_cifar10.py:shapes --workdir=/tmp/vs
        a 2-block width-64 ViT that really learns offline data (one to look at attention
        maps of): 6-class 16px shapes, batch 128, 800 steps. Expect 96.4% test accuracy
        (chance 16.7%; 93.4% at step 400) in under 2 minutes on 2 CPU cores
        (docs/models_on_shapes.md).
Expect: not measured yet (needs the CIFAR-10 download). The architecture matches the
        PyTorch reference the benchmark compares against (pre-LN, learned posemb, global
        average pooling).
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """ViT-Ti/4 CIFAR-10 recipe: AdamW, RandAugment, mixup, label smoothing; args "smoke",
    "shapes" (a tiny ViT trained on offline shapes)."""
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
    if "shapes" in args:
        _tiny_vit_on_shapes(c)
    return config_lib.finalize(c, arg)


def _tiny_vit_on_shapes(c) -> None:
    """A 2-block width-64 ViT that learns 6-class 16px `shapes` offline in ~2 minutes."""
    c.model = config_lib.model(
        "vit_ti4", image_size=16, pool="gap", depth=2, hidden_size=64, num_heads=2, mlp_dim=128
    )
    c.dataset.name = "shapes"
    c.dataset.num_classes = 6
    c.dataset.image_size = 16
    c.dataset.train_pp = ""  # the catalog's: decode, resize, flip, value range
    # No mixup or label smoothing: a 2-block ViT underfits even without them; a constant lr
    # keeps it learning to the end.
    c.batch_size = 128
    c.num_train_steps = 800
    c.label_smoothing = 0.0
    c.mixup.mixup_alpha = 0.0
    c.optimizer.weight_decay = 1e-4
    c.optimizer.grad_clip_norm = 0.0
    c.schedule.name = "constant"
    c.schedule.warmup_epochs = 0.0
    c.schedule.warmup_steps = 20
    c.log_every_steps = 100
    c.eval_every_steps = 400
    c.checkpoint_every_steps = 400
