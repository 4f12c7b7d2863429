"""Knowledge distillation: a trained teacher into a tiny ViT student (docs/distillation.md).

Offline recipe (mnist5k, no download). The teacher is the quick-start CNN, the student a
2-block width-64 ViT on 32px digits (16 tokens of 8x8 patches); ARG is "alone" (the default:
no teacher, the baseline), "soft" (KL to the teacher), "hard" or "deit":
Run:    python -m jaxvision.main --config=configs/quickstart.py --workdir=runs/teacher
        python -m jaxvision.main --config=configs/distill.py:ARG --workdir=runs/student_ARG \
            --config.distill.teacher=runs/teacher
The teacher sees the student's augmented, mixed 32px batch resized to its own 28px.
Expect: over seeds 0-2 (docs/distillation.md, "Offline results"; benchmarks/distillation.py):
        alone 91.7% [91.4-92.1], soft 92.4% [91.8-93.0] (every seed above its lone run, the
        mean by about the seeds' spread), deit 92.0% [91.0-92.9]; teacher 98.3%. Each student
        run 1-2 minutes on 2 CPU cores.
Smoke:  ARG "smoke" (alone, or e.g. "soft,smoke" with a teacher): 20 steps of batch 32.

Published-style recipe, ARG "imagenet" (not run here: it needs ImageNet and accelerators):
DeiT-Ti (ViT-Ti/16 with a distillation token) on ImageNet-1k for 300 epochs, taught by the
catalog's ResNet-50 (timm's A1 recipe) with hard labels on the distillation head,
AdamW at 5e-4 x batch / 512, weight decay 0.05, mixup 0.8 / cutmix 1.0, label smoothing 0.1,
drop-path 0.1, as in Touvron et al. 2021 (their RegNetY-16GF teacher gave DeiT-Ti 74.5%).
"""

from jaxvision import config as config_lib

STUDENT_ARGS = ("alone", "soft", "hard", "deit")


def _offline(c, loss: str) -> None:
    """The mnist5k student: a tiny ViT, mixup for consistent teaching, 500 steps."""
    c.model = config_lib.model(
        "vit_ti8", depth=2, hidden_size=64, num_heads=2, mlp_dim=128, image_size=32
    )
    c.dataset.name = "mnist5k"
    c.dataset.image_size = 32
    c.batch_size = 128
    c.num_train_steps = 500
    c.mixup.mixup_alpha = 0.2
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    if loss != "none":
        c.distill.loss = loss
        c.distill.teacher_image_size = 28  # the quick-start CNN's input: mnist5k's own size
    if loss == "soft":
        # Function matching (Beyer et al. 2022): the KL to the teacher alone, at T = 1.
        c.distill.weight = 1.0
        c.distill.temperature = 1.0


def _imagenet(c) -> None:
    """DeiT-Ti from a ResNet-50 teacher on ImageNet-1k (Touvron et al. 2021's recipe)."""
    c.model = config_lib.model("vit_ti16", drop_path=0.1)
    c.dataset.name = "imagenet2012"
    c.batch_size = 1024
    c.num_epochs = 300.0
    c.label_smoothing = 0.1
    c.mixup.mixup_alpha = 0.8
    c.mixup.cutmix_alpha = 1.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 5e-4 * c.batch_size / 512
    c.optimizer.weight_decay = 0.05
    c.schedule.warmup_epochs = 5.0
    c.compute_dtype = "bfloat16"
    c.distill.loss = "deit"
    c.distill.teacher = "resnet50.a1_in1k"
    c.distill.weight = 0.5
    c.log_every_steps = 100
    c.eval_every_steps = 2500
    c.checkpoint_every_steps = 2500


def get_config(arg: str | None = None):
    """Distillation configs; arg one of "alone" (default), "soft", "hard", "deit", "imagenet",
    each optionally with ",smoke"."""
    args = [a for a in (arg or "").split(",") if a]
    c = config_lib.base()
    if "imagenet" in args:
        _imagenet(c)
    else:
        chosen = [a for a in args if a in STUDENT_ARGS] or ["alone"]
        _offline(c, "none" if chosen[0] == "alone" else chosen[0])
    return config_lib.finalize(c, ",".join(a for a in args if a == "smoke"))
