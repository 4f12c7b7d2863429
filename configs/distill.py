"""Knowledge distillation: a trained teacher into a tiny ViT student (docs/distillation.md).

Offline recipe (mnist5k, no download). The teacher is the quick-start CNN, the student a
2-block width-64 ViT on 32px digits (16 tokens of 8x8 patches); ARG is "alone" (the default:
no teacher, the baseline), "soft" (KL to the teacher), "hard" or "deit":
Run:    python -m jaxvision.main --config=configs/quickstart.py --workdir=runs/teacher
        python -m jaxvision.main --config=configs/distill.py:ARG --workdir=runs/student_ARG \
            --config.distill.teacher=runs/teacher
The teacher sees the student's augmented, mixed 32px batch resized to its own 28px.
A teacher from 500 labels that labels all 4,000 images for a student that reads none:
        python -m jaxvision.main --config=configs/quickstart.py --workdir=runs/teacher500 \
            --config.dataset.train_split='train[:500]' --config.num_train_steps=375
        python -m jaxvision.main --config=configs/distill.py:soft,few,unlabelled \
            --workdir=runs/student_unlabelled --config.distill.teacher=runs/teacher500
Expect: over seeds 0-2 (docs/distillation.md, "Offline results"; benchmarks/distillation.py):
        500 steps: alone 91.5% [90.2-92.3], soft (T 4, w 0.9) 90.8% [90.3-91.1], hard 91.7%
        [90.8-92.9], deit 91.4% [89.9-92.4]; teacher 98.3% (seed 0). Each student run about
        1-2 minutes on 2 CPU cores.
        ARG ",long" (2000 steps, soft as function matching: T 1, w 1), measured with
        `nice -n 5 python benchmarks/distillation.py --root=/tmp/distill3 --seeds=0,1,2
        --methods=alone,soft,deit,hard --teacher_seeds=0,1,2 --schedule=long`: alone 96.6%
        [96.1-96.9], soft 96.9% [96.7-97.0], hard 97.1% [96.5-97.7], deit 96.9% [96.5-97.3];
        teacher 98.4% [98.3-98.5]. At neither length does a method beat the lone student by
        more than the seeds' spread. About 2.5 (alone) to 6 (distilled) minutes per run.
        ARG ",few" (teacher and students on 496 labelled images, 2000 steps; `benchmarks/
        distillation.py --schedule=few`): teacher 96.5% [96.3-96.7], alone 93.6% [93.2-94.2],
        soft 93.6% [93.4-93.9], hard 93.4% [92.3-94.0], deit 94.3% [93.6-94.7].
        ARG "soft,few,unlabelled" (function matching on all 4,000 images without labels,
        from the 496-label teacher): 95.9% [95.3-96.4], +1.8 to +2.8 points over the lone
        496-label student on every seed (docs/distillation.md).
Smoke:  ARG "smoke" (alone, or e.g. "soft,smoke" with a teacher): 20 steps of batch 32.

Published-style recipe, ARG "imagenet" (not run here: it needs ImageNet and accelerators):
DeiT-Ti (ViT-Ti/16 with a distillation token) on ImageNet-1k for 300 epochs, taught by the
catalog's ResNet-50 (timm's A1 recipe) with hard labels on the distillation head,
AdamW at 5e-4 x batch / 512, weight decay 0.05, mixup 0.8 / cutmix 1.0, label smoothing 0.1,
drop-path 0.1, as in Touvron et al. 2021 (their RegNetY-16GF teacher gave DeiT-Ti 74.5%).
"""

from jaxvision import config as config_lib

STUDENT_ARGS = ("alone", "soft", "hard", "deit")
FEW_LABELS = 500  # ARG "few": the training images both teacher and student learn from


def _offline(c, loss: str, long: bool = False, few: bool = False, unlabelled: bool = False) -> None:
    """The mnist5k student: a tiny ViT, mixup for consistent teaching, 500 steps (2000 long);
    `few`: 2000 steps on the first FEW_LABELS training images only; `unlabelled`: function
    matching on all 4,000 training images without their labels (a teacher that learned
    from the FEW_LABELS images labels them)."""
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
    if few:
        # The regime where a teacher matters most: few labelled images. Teacher and student
        # learn from the same FEW_LABELS images; the student sees them for 512 epochs.
        c.dataset.train_split = f"train[:{FEW_LABELS}]"
        long = True
    if unlabelled:
        if loss != "soft":
            raise ValueError(
                f'ARG "unlabelled" needs "soft" (function matching, label weight 0), got {loss!r}.'
            )
        # Every training image, none of its labels: with w = 1 the label loss has weight 0.
        c.dataset.train_split = "train"
        long = True
    if long:
        # Distillation's gains come from long student schedules (Beyer et al. 2022).
        c.num_train_steps = 2000
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 500
    if loss == "soft" and long:
        # Function matching (Beyer et al.): the KL to the teacher alone, at T = 1.
        c.distill.weight = 1.0
        c.distill.temperature = 1.0
    elif loss == "soft":
        # Hinton et al.'s soft targets: at T = 4 a confident teacher's distribution still shows
        # which wrong classes are close; w = 0.9 keeps a little of the label loss. Function
        # matching (w = 1, T = 1) needs far longer schedules than 500 steps.
        c.distill.weight = 0.9
        c.distill.temperature = 4.0


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
    each optionally with ",long" (2000 student steps), ",few" (2000 steps on 500 labelled
    images), ",unlabelled" ("soft" only: on all 4,000 images without labels) and ",smoke"."""
    args = [a for a in (arg or "").split(",") if a]
    c = config_lib.base()
    if "imagenet" in args:
        _imagenet(c)
    else:
        chosen = [a for a in args if a in STUDENT_ARGS] or ["alone"]
        loss = "none" if chosen[0] == "alone" else chosen[0]
        _offline(c, loss, long="long" in args, few="few" in args, unlabelled="unlabelled" in args)
    return config_lib.finalize(c, ",".join(a for a in args if a == "smoke"))
