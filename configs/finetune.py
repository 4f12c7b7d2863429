"""Fine-tuning recipes: start from pretrained weights by name (or another workdir).

Run:    python -m jaxvision.main --config=configs/finetune.py:vit_b16_cifar10 \\
          --workdir=runs/ft_vit_b16_c10
        ViT-B/16 AugReg ImageNet-21k (`vit_b16.augreg_in21k`) -> CIFAR-10 at 384px: SGD
        momentum 0.9, lr 0.03, batch 512, 10k steps (500 warmup), cosine, clip 1.0, no
        weight decay. Follows: the vision_transformer README's fine-tune recipe; the AugReg
        paper (arXiv:2106.10270) reports about 99% CIFAR-10 for B/16. Not measured here
        (no download, no accelerator).
Run:    python -m jaxvision.main --config=configs/finetune.py:resnet50_folder \\
          --workdir=runs/ft_r50 --config.dataset.name=folder:/path/to/images
        timm's ResNet-50 A1 (`resnet50.a1_in1k`) -> your `root/<split>/<class>/*.jpg` at
        224px: SGD momentum 0.9, lr 0.01, batch 64, 20 epochs, cosine, ImageNet mean/std.
        Follows the usual timm transfer recipe. Not measured here.
Run:    python -m jaxvision.main --config=configs/finetune.py:vit_ti16_folder \\
          --workdir=runs/ft_ti16 --config.dataset.name=folder:/path/to/images
        ViT-Ti/16 AugReg in21k->in1k (`vit_ti16.augreg_in21k_ft_in1k`, 5.7M parameters) ->
        your folder at 224px, small enough for a CPU: Adam lr 1e-4, batch 32, 10 epochs,
        value range [-1, 1]. Not measured here (no download).
Run:    python -m jaxvision.main --config=configs/finetune.py:mnist5k --workdir=runs/src
        python -m jaxvision.main --config=configs/finetune.py:digits --workdir=runs/ft \\
          --config.pretrained=runs/src [--config.seed=S]
        The offline case: a small CNN pretrained on mnist5k (200 steps, test 0.956), fine-tuned
        on 8x8 digits read at 28px for 50 steps. Measured, digits test accuracy at step 50 for
        seeds 0/1/2: 0.960/0.960/0.980 fine-tuned vs 0.937/0.930/0.953 from scratch (the same
        command without --config.pretrained): +0.023 to +0.030 for every seed. Before any
        fine-tuning (mnist5k and digits share the labels 0-9), `python -m jaxvision.evaluate
        --pretrained=runs/src --dataset=digits --evals=linear_probe,fewshot` reports 0.473
        accuracy, a 0.980 linear probe and 0.907 10-shot on the frozen features.
Smoke:  python -m jaxvision.main --config=configs/finetune.py:smoke --workdir=/tmp/ft
        (no pretrained weights, 32px shapes; checks that the recipe runs, not transfer).
"""

from jaxvision import config as config_lib


def _transfer(c, pretrained: str, model, dataset: str, size: int, norm: str, eval_resize: str):
    """What every recipe shares: the weights, the model, and the data at `size` px, with
    inception crop + flip for training and `eval_resize` for eval, both then `norm`."""
    c.pretrained = pretrained
    c.model = model
    c.dataset.name = dataset
    c.dataset.image_size = size
    c.dataset.train_pp = f"decode|inception_crop({size})|flip_lr|{norm}"
    c.dataset.eval_pp = f"decode|{eval_resize}|{norm}"


_MINUS1_1 = "value_range(-1,1)"
_CROP_224 = "resize_small(256)|central_crop(224)"


def _vit_b16_cifar10(c) -> None:
    model = config_lib.model("vit_b16", image_size=384, scan=True)
    _transfer(c, "vit_b16.augreg_in21k", model, "cifar10", 384, _MINUS1_1, "resize(384)")
    c.batch_size = 512
    c.num_train_steps = 10_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.03
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_steps = 500
    c.eval_every_steps = c.checkpoint_every_steps = 1000


def _resnet50_folder(c) -> None:
    model = config_lib.model("resnet50")
    _transfer(c, "resnet50.a1_in1k", model, "folder:images", 224, "normalize(imagenet)", _CROP_224)
    c.batch_size = 64
    c.num_epochs = 20.0
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01


def _vit_ti16_folder(c) -> None:
    model = config_lib.model("vit_ti16", image_size=224)
    _transfer(c, "vit_ti16.augreg_in21k_ft_in1k", model, "folder:images", 224, _MINUS1_1, _CROP_224)
    c.batch_size = 32
    c.num_epochs = 10.0
    c.optimizer.learning_rate = 1e-4


def _small_cnn(c, dataset: str, steps: int) -> None:
    """The offline pair: the same small CNN on 28px single-channel digits."""
    c.model = config_lib.model("cnn", features=[16, 32], hidden=[64])
    c.dataset.name = dataset
    c.dataset.image_size = 28
    c.batch_size = 32
    c.num_train_steps = steps
    c.optimizer.learning_rate = 3e-3
    c.schedule.warmup_steps = 5
    c.log_every_steps = 25
    c.eval_every_steps = 0
    c.checkpoint_every_steps = steps


def get_config(arg: str | None = None):
    """Args: vit_b16_cifar10 (default), resnet50_folder, vit_ti16_folder, mnist5k, digits,
    smoke."""
    args = (arg or "").split(",")
    c = config_lib.base()
    if "resnet50_folder" in args:
        _resnet50_folder(c)
    elif "vit_ti16_folder" in args:
        _vit_ti16_folder(c)
    elif "mnist5k" in args:
        _small_cnn(c, "mnist5k", 200)
    elif "digits" in args:
        _small_cnn(c, "digits", 50)
    else:
        _vit_b16_cifar10(c)
    if "smoke" in args:
        # No weights to download: the smoke run checks the recipe, on 32px shapes.
        c.pretrained = ""
        if c.model.name.startswith("vit"):
            c.model = config_lib.model(c.model.name, image_size=32, depth=2)
        c.dataset.image_size = 32 if c.model.name != "cnn" else c.dataset.image_size
    return config_lib.finalize(c, arg)
