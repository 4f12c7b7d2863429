"""ResNet-50 v1.5 on ImageNet-1k: the standard 90-epoch SGD recipe.

Run:    python -m jaxvision.main --config=configs/resnet50_imagenet.py --workdir=runs/r50
        (imagenet2012 needs a manual download: the error message says where the files go)
Smoke:  python -m jaxvision.main --config=configs/resnet50_imagenet.py:smoke --workdir=/tmp/r50
        20 steps on offline 64px shapes, one bottleneck block per stage at width 1/4, under
        a minute on 2 CPU cores; about 12% accuracy (chance 10%): it checks that the recipe
        runs, not that it learns.
Anchor: 76.1-76.5% top-1 on the validation set (torchvision's ResNet-50 v1.5: 76.13%; the
        flax ImageNet example, 100 epochs: ~76.3%). Global batch 1024 with lr 0.4 is the
        "0.1 per 256 images" linear scaling rule; 5 warmup epochs, cosine, wd 1e-4 on
        kernels, label smoothing 0.1, bf16 compute. Not measured here (no ImageNet, no
        accelerator).
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """ResNet-50 ImageNet recipe; arg "smoke" runs a width-1/4, one-block-per-stage net on
    64px shapes."""
    args = (arg or "").split(",")
    c = config_lib.base()
    c.model = config_lib.model("resnet50")
    c.dataset.name = "imagenet2012"
    c.dataset.cache = False  # 140 GB of JPEGs do not fit in memory
    c.batch_size = 1024
    c.num_epochs = 90.0
    c.compute_dtype = "bfloat16"
    c.label_smoothing = 0.1
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.4
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 5.0
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    if "smoke" in args:
        # One bottleneck block per stage (each with its projection and stride): compiling the
        # full 16-block train step took about half of the smoke's 60-120 s.
        c.model = config_lib.model("resnet50", width=0.25, stage_sizes=(1, 1, 1, 1))
        c.dataset.image_size = 64
        c.compute_dtype = "float32"  # bf16 is slower than fp32 on most CPUs
    return config_lib.finalize(c, arg)
