"""The classic CNN (conv-pool-conv-pool-fc-fc-fc) on CIFAR-10: SGD + momentum, crop and flip.

Run:    python -m jaxvision.main --config=configs/cnn_cifar10.py --workdir=runs/cnn_cifar10
        (tfds downloads cifar10 on first use: add --config.dataset.download=True)
Test:   python -m jaxvision.evaluate --workdir=runs/cnn_cifar10 --split=test
Smoke:  python -m jaxvision.main --config=configs/cnn_cifar10.py:smoke --workdir=/tmp/cnn_smoke
        20 steps on offline shapes, under a minute on 2 CPU cores; about 16% accuracy
        (chance 10%): it checks that the config runs, not that it learns.
Expect: not measured yet (needs the CIFAR-10 download); record the result here.
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """CIFAR-10 CNN recipe; arg "smoke" runs offline in seconds."""
    c = config_lib.base()
    c.model = config_lib.model("cnn", features=(64, 128), hidden=(384, 192), dropout=0.3)
    c.dataset.name = "cifar10"  # train[:98%] to train, train[98%:] to validate
    c.batch_size = 128
    c.num_epochs = 60.0
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 1.0
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    return config_lib.finalize(c, arg)
