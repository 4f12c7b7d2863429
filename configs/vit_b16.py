"""ViT-B/16 on ImageNet-1k from scratch ("better plain ViT baselines"), or fine-tuned on CIFAR-10.

Run:    python -m jaxvision.main --config=configs/vit_b16.py --workdir=runs/vit_b16
        (imagenet2012 needs a manual download: the error message says where the files go)
        ViT-S/16 variant of the same recipe: --config=configs/vit_b16.py:s16
Anchor: the recipe of Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k":
        global batch 1024, Adam (b2 0.999) lr 1e-3, decoupled weight decay 1e-4
        (optax's adamw multiplies its weight_decay by the learning rate, so 1e-4 / 1e-3 =
        0.1 here), 10k warmup steps then cosine, gradient clipping 1.0, mixup 0.2,
        RandAugment(2,10), inception crop + flip, global average pooling, fixed 2-D
        sin-cos position embedding, zero-init head. Published: ViT-S/16 76.5% top-1
        after 90 epochs. Not measured here (no ImageNet, no accelerator).

Fine-tune: python -m jaxvision.main --config=configs/vit_b16.py:cifar10 \\
             --workdir=runs/vit_b16_c10 \\
             --config.pretrained=gs://vit_models/imagenet21k/ViT-B_16.npz
        starts from the public ImageNet-21k ViT-B/16 checkpoint (google-research/
        vision_transformer; downloaded and cached on first use) at 384px:
        SGD momentum 0.9, lr 0.03, batch 512, 10k steps (500 warmup), cosine, clip 1.0,
        no weight decay. Anchor: 99.0% CIFAR-10 test accuracy in the vision_transformer
        README. Not measured here (no download).
Smoke:  python -m jaxvision.main --config=configs/vit_b16.py:smoke --workdir=/tmp/vit_b16
        (ViT-B/16 width, 2 blocks, 32px shapes: 4 tokens), 1-2 minutes on 2 CPU cores;
        about 25% accuracy (chance 10%): it checks that the config runs, not that it learns.
"""

from jaxvision import config as config_lib


def _imagenet(c, name: str) -> None:
    c.model = config_lib.model(name, pool="gap", posemb="sincos2d", scan=True)
    c.dataset.name = "imagenet2012"
    c.dataset.cache = False
    c.dataset.train_pp = "decode|inception_crop(224)|flip_lr|randaugment(2,10)|value_range(-1,1)"
    c.dataset.eval_pp = "decode|resize_small(256)|central_crop(224)|value_range(-1,1)"
    c.batch_size = 1024
    c.num_epochs = 90.0
    c.compute_dtype = "bfloat16"
    c.mixup.mixup_alpha = 0.2
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 10_000
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500


def _cifar10_finetune(c) -> None:
    c.model = config_lib.model("vit_b16", image_size=384, scan=True)
    c.dataset.name = "cifar10"
    c.dataset.image_size = 384
    c.dataset.train_pp = "decode|inception_crop(384)|flip_lr|value_range(-1,1)"
    c.dataset.eval_pp = "decode|resize(384)|value_range(-1,1)"
    c.batch_size = 512
    c.num_train_steps = 10_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.03
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 500
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000


def get_config(arg: str | None = None):
    """ImageNet from scratch by default; args: "s16" (ViT-S/16), "cifar10" (fine-tune), "smoke"."""
    args = (arg or "").split(",")
    c = config_lib.base()
    if "cifar10" in args:
        _cifar10_finetune(c)
    else:
        _imagenet(c, "vit_s16" if "s16" in args else "vit_b16")
    if "smoke" in args:
        # ViT-B width on 32px images (4 tokens) with 2 blocks: the full 12 took 144 s.
        c.model = config_lib.model(
            c.model.name, image_size=32, pool=c.model.get("pool", "token"), scan=True, depth=2
        )
        c.dataset.image_size = 32
        c.compute_dtype = "float32"
        c.mixup.mixup_alpha = 0.0
    return config_lib.finalize(c, arg)
