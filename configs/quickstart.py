"""The classic CNN on mnist5k (4,000 real MNIST digits, no download).

Run:    python -m jaxvision.main --config=configs/quickstart.py --workdir=runs/quickstart
Smoke:  python -m jaxvision.main --config=configs/quickstart.py:smoke --workdir=/tmp/qs
Expect: (filled in below after measuring)
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """Config for the quick start; arg "smoke" shrinks it to seconds."""
    c = config_lib.base()
    c.model = config_lib.model("cnn", dropout=0.25)
    c.dataset.name = "mnist5k"
    c.batch_size = 128
    c.num_epochs = 20.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    return config_lib.finalize(c, arg)
