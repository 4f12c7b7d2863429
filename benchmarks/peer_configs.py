"""The architectures and optimizers of the PyTorch peer (shared/peers/torch_reference.py).

Run:    python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:resnet18_cifar
        python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:vit_ti4_cifar
        python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:resnet50_imagenet \
            --config.batch_size=16
        python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:vit_b16 \
            --what=compile --config.batch_size=8 --config.model.scan=True
What:   the same network, loss and optimizer step as the peer at batch 128 on 32x32
        random images: resnet18_cifar is ResNet-18 with the 3x3 stride-1 stem and SGD
        momentum 0.9; vit_ti4_cifar is ViT-Ti/4 (pre-LN, learned posemb, GAP head, MLP 4x,
        no dropout, no drop-path) with AdamW; resnet50_imagenet and vit_b16_imagenet are the
        peer's 224 px, 1000-class ResNet-50 v1.5 (SGD) and ViT-B/16 (GAP head, AdamW); pass
        a batch that fits the machine (compare_torch.sh uses 16 and 8). No augmentation,
        mixup or clipping: the benchmark times the step the peer times. The model keys
        (scan, remat, dtype via compute_dtype) are here so that --config.model.KEY=... can
        change them.
"""

from jaxvision import config as config_lib

# name: (model section, optimizer name, learning rate, image size)
PEERS = {
    "resnet18_cifar": (config_lib.model("resnet18", stem="cifar"), "sgd", 0.1, 32),
    "vit_ti4_cifar": (
        config_lib.model("vit_ti4", image_size=32, pool="gap", scan=False, remat=False),
        "adamw",
        1e-3,
        32,
    ),
    # ImageNet-sized (224 px, 1000 classes): ResNet-50 v1.5 with SGD, ViT-B/16 with a GAP
    # head and AdamW, as the peer's resnet50_imagenet and vit_b16_imagenet.
    "resnet50_imagenet": (config_lib.model("resnet50"), "sgd", 0.1, 224),
    "vit_b16_imagenet": (
        config_lib.model("vit_b16", image_size=224, pool="gap", scan=False, remat=False),
        "adamw",
        1e-3,
        224,
    ),
    # Compile-time comparisons of a deep model (unrolled vs scan); ImageNet-sized inputs.
    "vit_b16": (
        config_lib.model("vit_b16", image_size=224, scan=False, remat=False),
        "adamw",
        1e-3,
        224,
    ),
}


def get_config(arg: str | None = None):
    """One of PEERS by name (default resnet18_cifar); the dataset is only a shape source."""
    name = arg or "resnet18_cifar"
    if name not in PEERS:
        raise ValueError(f"Unknown peer config {name!r}; known: {', '.join(PEERS)}.")
    model, optimizer, lr, size = PEERS[name]
    c = config_lib.base()
    c.model = model
    # The benchmark reads only the shape and class count: no data is read or downloaded.
    c.dataset.name = "cifar10" if size == 32 else "imagenet2012"
    c.batch_size = 128
    c.num_train_steps = 1000
    c.optimizer.name = optimizer
    c.optimizer.learning_rate = lr
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0 if optimizer == "sgd" else 0.01  # torch AdamW's default
    c.optimizer.weight_decay_mask = ".*"  # torch applies it to every parameter
    c.schedule.name = "constant"
    return config_lib.finalize(c, None)
