"""The training config schema: every key jaxvision reads, its default, and its checks.

Experiment files in `configs/` start from `base()` and change fields. The returned
ConfigDict is locked, so a misspelt key fails at once with the key's name instead of
being silently ignored; `validate` checks values before anything is compiled.
"""

import difflib

import ml_collections

# Keys under `model` (and the teacher's `distill.teacher_model`) other than `name` are passed
# to `jaxvision.models.create` as overrides, so they are free-form (the model constructor
# rejects unknown ones).
_FREE_FORM = ("model", "distill.teacher_model")

OPTIMIZERS = ("sgd", "adamw", "lamb", "lion", "adafactor")
SCHEDULES = ("cosine", "linear", "rsqrt", "step", "constant")
LOSSES = ("softmax_xent", "sigmoid_xent")
COMPUTE_DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("stop", "skip")
DISTILL_LOSSES = ("none", "soft", "hard", "deit")


def base() -> ml_collections.ConfigDict:
    """All config keys with their defaults (a CNN on mnist5k)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = model("cnn")
    # Fine-tuning: weights that replace the fresh initialisation of a new run (not used when
    # resuming): a catalog name (python -m jaxvision.models --pretrained), hf-hub:ORG/REPO[/FILE],
    # a URL, a .npz / .safetensors file, or another jaxvision workdir.
    c.pretrained = ""
    c.pretrained_resolved = ""  # written by the run: the source and SHA-256 it loaded
    c.evals = ()  # feature evaluators at every eval: "fewshot[:DATASET]", "linear_probe[:...]"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "mnist5k"  # a catalog name, any tfds name, or folder:/path
    c.dataset.data_dir = ""  # tfds data dir; "" = TFDS_DATA_DIR or ~/tensorflow_datasets
    c.dataset.train_split = ""  # "" = the catalog's default
    c.dataset.eval_split = ""
    c.dataset.num_classes = 0  # 0 = from the dataset's info
    # 0 = the catalog's default; folders: model.image_size if set, else from their images
    # (the median shorter side, at most 224).
    c.dataset.image_size = 0
    c.dataset.channels = 0  # folder: 1 or 3; 0 = 1 when every image is grayscale, else 3
    c.dataset.train_pp = ""  # preprocessing ops, e.g. "decode|random_crop(28,2)|value_range"
    c.dataset.eval_pp = ""
    c.dataset.shuffle_buffer = 10_000  # examples, shared by the order shards
    # The training order is built from this many shards (each shuffled and augmented on its
    # own): any process count dividing it reads the same global batches.
    c.dataset.order_shards = 8
    c.dataset.cache = True  # cache the encoded split in memory (small datasets)
    c.dataset.download = False  # let tfds download and prepare a dataset that is missing
    c.dataset.validation_fraction = 0.1  # folder: eval share of train/ when there is no test/
    c.dataset.on_bad_file = "skip"  # folder: "skip" (report and skip) or "error"
    # folder: images with more pixels (read from the header) are skipped undecoded, so a
    # decompression bomb cannot exhaust memory; PIL's default limit; 0 = no limit.
    c.dataset.max_image_pixels = 89_478_485
    c.dataset.class_weighting = "none"  # "none" | "inverse" | "inverse_sqrt": batch["weight"]
    c.dataset.class_balanced_sampling = False  # every class equally often in training batches
    c.dataset.deterministic = True  # False: faster tf.data, but order not reproducible
    c.dataset.parallel_calls = 0  # parallel map calls; 0 = one per thread
    c.dataset.threads = 0  # tf.data thread pool size; 0 = all cores

    c.batch_size = 128  # global, over all devices and processes
    c.num_train_steps = -1  # -1: derived from num_epochs
    c.num_epochs = 10.0
    c.eval_batch_size = 0  # 0 = batch_size
    c.grad_accum_steps = 1  # split each batch into this many sequential micro-batches

    c.loss = "softmax_xent"  # or "sigmoid_xent" (per-class binary cross-entropy, summed)
    c.label_smoothing = 0.0
    c.mixup = ml_collections.ConfigDict()
    c.mixup.mixup_alpha = 0.0  # > 0: mixup with lambda ~ Beta(alpha, alpha), on device
    c.mixup.cutmix_alpha = 0.0  # > 0: cutmix
    c.mixup.switch_prob = 0.5  # with both on: probability of cutmix for a batch
    c.compute_dtype = "float32"  # "bfloat16": bf16 activations, fp32 master weights

    c.parallel = ml_collections.ConfigDict()
    c.parallel.fsdp = False  # shard large parameters and optimizer state along `data`
    c.parallel.fsdp_min_size = 2**16  # parameters with fewer elements stay replicated
    # CPU only: split the host into this many XLA devices (data parallel over the cores);
    # 0 = JAX's default (one device using every core). Ignored by GPU/TPU runs.
    c.parallel.cpu_devices = 0
    # Split each (micro-)batch into this many independent slices of the train step's graph,
    # which XLA:CPU can run side by side; 0 = auto (2 on a single CPU device for models
    # without BatchNorm, else 1). With BatchNorm, each branch normalises with its own
    # statistics. (Forward passes: the backend layer picks.)
    c.parallel.batch_branches = 0

    c.optimizer, c.schedule = _optimizer_section(), _schedule_section()
    c.distill = _distill_section()
    c.pruning = _pruning_section()
    c.quantization = _quantization_section()

    c.log_every_steps = 50
    c.eval_every_steps = 500  # also at the end; 0 = only at the end
    c.checkpoint_every_steps = 500  # also at the end
    c.keep_checkpoints = 3
    c.on_nonfinite = "stop"  # NaN/Inf loss or gradient: "stop" the run or "skip" the step
    c.max_skipped_share = 0.1  # with "skip": fail once more than this share of steps was skipped
    c.force_resume = False  # resume even if the model or data config changed
    return c


def _optimizer_section() -> ml_collections.ConfigDict:
    """The `optimizer` section of `base()`."""
    o = ml_collections.ConfigDict()
    o.name = "adamw"
    o.learning_rate = 1e-3  # peak learning rate
    o.momentum = 0.9  # sgd
    o.nesterov = False  # sgd
    o.b1 = 0.9  # adamw, lamb, lion
    o.b2 = 0.999  # adamw, lamb, lion (lion's usual value is 0.99)
    o.weight_decay = 0.0
    o.grad_clip_norm = 0.0  # 0 = no clipping
    o.weight_decay_mask = r"(^|/)kernel$"  # regex on "/"-joined parameter paths
    o.freeze = ""  # regex: matching parameters are not trained ("" = none)
    o.lr_multipliers = ()  # ((regex, multiplier), ...): first match wins
    o.ema_decay = 0.0  # > 0: keep, evaluate and checkpoint an EMA of the weights
    return o


def _distill_section() -> ml_collections.ConfigDict:
    """The `distill` section of `base()`: knowledge distillation from a frozen teacher."""
    d = ml_collections.ConfigDict()
    # "none" (off) | "soft" (KL to the teacher at `temperature`) | "hard" (teacher argmax as
    # labels) | "deit" (a ViT student's distillation token and head on the teacher's argmax).
    d.loss = "none"
    # A jaxvision workdir, a catalog name, hf-hub:ORG/REPO[/FILE], a URL or a weights file.
    d.teacher = ""
    # The teacher's model name and overrides; name "" = the teacher workdir's or catalog
    # entry's model.
    d.teacher_model = model("")
    d.teacher_image_size = 0  # 0 = the teacher model's image_size, else the student's
    d.temperature = 1.0  # soft: both distributions at this temperature, the KL times T^2
    d.weight = 0.5  # share of the teacher's term; the label loss gets 1 - weight
    d.force_teacher = False  # resume even if the teacher (or the distill loss) changed
    d.teacher_resolved = ""  # written by the run: the teacher's source and checksum
    return d


def _schedule_section() -> ml_collections.ConfigDict:
    """The `schedule` section of `base()`."""
    s = ml_collections.ConfigDict()
    s.name = "cosine"  # linear warmup, then cosine decay to end_factor * peak
    s.warmup_steps = 0
    s.warmup_epochs = 0.0  # alternative to warmup_steps
    s.end_factor = 0.0  # cosine, linear: final lr = end_factor * peak
    s.timescale_steps = 10_000  # rsqrt: lr = peak / sqrt(1 + t / timescale)
    s.boundaries_steps = ()  # step: multiply lr by decay_factor at these steps
    s.boundaries_epochs = ()  # step: ... or at these epochs
    s.decay_factor = 0.1  # step
    return s


def _pruning_section() -> ml_collections.ConfigDict:
    """The `pruning` section of `base()`: magnitude pruning during training (off by default)."""
    p = ml_collections.ConfigDict()
    p.sparsity = 0.0  # share of conv/dense/attention kernel weights set to zero; 0 = off
    p.structure = "unstructured"  # global magnitude, or "N:M" (e.g. "2:4") over the inputs
    p.start_step = 0  # masks are set at this step (one-shot) ...
    p.end_step = 0  # ... or, if larger, sparsity rises on the cubic schedule until this step
    p.every_steps = 100  # gradual: how often the masks are recomputed
    return p


def _quantization_section() -> ml_collections.ConfigDict:
    """The `quantization` section of `base()`: int8 through qwix (off by default)."""
    q = ml_collections.ConfigDict()
    # "none" | "qat" (train fake-quantized) | "ptq-static" | "ptq-dynamic" (int8 models that
    # python -m jaxvision.compress writes; not trainable).
    q.mode = "none"
    q.weight_bits = 8  # conv, dense and attention-projection kernels: 8 or 4
    q.act_bits = 8  # their input activations: 8, 4 or 0 (float)
    q.calibration_batches = 8  # ptq-static: training batches the input scales come from
    return q


def model(name: str, **overrides: object) -> ml_collections.ConfigDict:
    """The `model` section: a registered name plus overrides passed to `models.create`."""
    return ml_collections.ConfigDict({"name": name, **overrides})


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads "path/to/config.py[:arg]" the way `--config=` does (for notebooks and tools)."""
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location("jaxvision_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Config file {path!r} has no get_config(arg=None) function.")
    return module.get_config(arg or None)


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the generic `smoke` arg and locks the config against new keys."""
    args = [a for a in (arg or "").split(",") if a]
    if "smoke" in args:
        shrink_for_smoke(config)
    config.lock()
    return config


def shrink_for_smoke(config: ml_collections.ConfigDict) -> None:
    """Shrinks any config to a run of seconds on 2 CPU cores with no download."""
    from jaxvision.data import catalog

    if not catalog.is_offline(config.dataset.name):
        config.dataset.name = "shapes"
        config.dataset.train_split = ""
        config.dataset.eval_split = ""
        config.dataset.train_pp = ""
        config.dataset.eval_pp = ""
        config.dataset.num_classes = (
            min(max(config.dataset.num_classes, 2), 10) if (config.dataset.num_classes) else 10
        )
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = 20
    config.schedule.warmup_steps = min(config.schedule.warmup_steps, 5)
    # Epoch-based schedule parts would outlast a 20-step run.
    config.schedule.warmup_epochs = 0.0
    config.schedule.boundaries_epochs = ()
    config.schedule.boundaries_steps = ()
    config.log_every_steps = 5
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 10
    config.dataset.shuffle_buffer = 1000
    # 20 steps are compile-bound, and a branched step takes longer to compile.
    config.parallel.batch_branches = 1


def suggest(key: str, known: list[str]) -> str:
    """ " Did you mean 'x'?" for the known name closest to a misspelt `key`, else ""."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_keys(config: ml_collections.ConfigDict, reference=None, prefix: str = "") -> None:
    """Raises ValueError naming any key the schema does not know (configs not built on base)."""
    reference = base() if reference is None else reference
    for key in config:
        path = f"{prefix}{key}"
        if key not in reference:
            raise ValueError(
                f"Unknown config key {path!r}.{suggest(key, list(reference.keys()))} "
                f"Known keys here: {', '.join(sorted(reference.keys()))}."
            )
        value, ref = config[key], reference[key]
        if isinstance(ref, ml_collections.ConfigDict) and path not in _FREE_FORM:
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"Config key {path!r} must be a section, got {value!r}.")
            check_keys(value, ref, prefix=f"{path}.")


def _check_model_arguments(section: ml_collections.ConfigDict) -> None:
    """Every key under `model` must be an argument of the named model's constructor."""
    from jaxvision.models import registry

    known = registry.constructor_arguments(section.name)
    for key in section:
        _require(
            key == "name" or key in known,
            f"Unknown config key 'model.{key}': model {section.name!r} takes no argument "
            f"{key!r}.{suggest(key, list(known))} Its arguments: {', '.join(sorted(known))}.",
        )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_choice(key: str, value: str, known: tuple[str, ...]) -> None:
    _require(
        value in known,
        f"Unknown {key} {value!r}.{suggest(value, list(known))} Known: {', '.join(known)}.",
    )


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int) -> None:
    """Checks values a run depends on; raises ValueError naming the key and what to do."""
    check_keys(config)
    _require(isinstance(config.model.get("name"), str), "model.name must be a model name string.")
    from jaxvision import models

    if config.model.name not in models.names():
        models.create(config.model.name, num_classes=1)  # raises, listing the known names
    _check_model_arguments(config.model)
    if config.pretrained:
        from jaxvision.models import pretrained_source

        pretrained_source.check_spec(config.pretrained, config.model.name)
    if config.evals:
        from jaxvision import feature_eval

        feature_eval.parse_evals(tuple(config.evals), config.dataset.name)
    b = config.batch_size
    _require(b > 0, f"batch_size must be positive, got {b}.")
    _require(
        b % num_devices == 0,
        f"batch_size={b} is not divisible by the number of devices ({num_devices}). "
        f"Use a multiple of {num_devices}, e.g. "
        f"--config.batch_size={max(1, b // num_devices) * num_devices}.",
    )
    _require(
        b % num_processes == 0, f"batch_size={b} is not divisible by {num_processes} processes."
    )
    shards = config.dataset.order_shards
    _require(
        isinstance(shards, int) and shards >= 1,
        f"dataset.order_shards must be an integer >= 1, got {shards!r}.",
    )
    eb = config.eval_batch_size or b
    _require(
        eb > 0 and eb % num_devices == 0,
        f"eval_batch_size={eb} must be positive and divisible by the {num_devices} devices.",
    )
    _require(
        config.num_train_steps > 0 or (config.num_train_steps == -1 and config.num_epochs > 0),
        f"Set num_train_steps > 0 or num_epochs > 0 (got num_train_steps={config.num_train_steps}, "
        f"num_epochs={config.num_epochs}).",
    )
    cpu = config.parallel.cpu_devices
    _require(cpu >= 0, f"parallel.cpu_devices must be >= 0 (0 = JAX's default), got {cpu}.")
    _validate_optimization(config, num_devices)
    _validate_distill(config)
    from jaxvision.compression import pruning

    pruning.check_config(config.pruning)
    from jaxvision.compression import quantized_model

    quantized_model.check_config(config.quantization)
    quantized_model.check_trainable(config.quantization)
    for key in ("log_every_steps", "checkpoint_every_steps"):
        _require(config[key] > 0, f"{key} must be positive, got {config[key]}.")
    _require(config.eval_every_steps >= 0, "eval_every_steps must be >= 0 (0 = only at the end).")
    _require(config.keep_checkpoints >= 1, "keep_checkpoints must be >= 1.")
    pixels = config.dataset.max_image_pixels
    _require(
        isinstance(pixels, int) and pixels >= 0,
        f"dataset.max_image_pixels must be an integer >= 0 (0 = no limit), got {pixels!r}.",
    )
    from jaxvision.data import catalog

    catalog.validate_config(config.dataset)  # values and preprocessing ops, naming the key


def _validate_optimization(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Optimizer, schedule, loss and precision values."""
    opt = config.optimizer
    _check_choice("optimizer.name", opt.name, OPTIMIZERS)
    _require(
        opt.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {opt.learning_rate}."
    )
    _require(opt.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}.")
    _require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm must be >= 0 (0 = no clipping).")
    _require(0 <= opt.ema_decay < 1, f"optimizer.ema_decay must be in [0, 1), got {opt.ema_decay}.")
    for pair in opt.lr_multipliers:
        _require(
            len(pair) == 2 and isinstance(pair[0], str) and pair[1] >= 0,
            f"optimizer.lr_multipliers entries are (regex, multiplier >= 0) pairs, got {pair!r}.",
        )
    sched = config.schedule
    _check_choice("schedule.name", sched.name, SCHEDULES)
    _require(
        sched.warmup_steps >= 0 and sched.warmup_epochs >= 0,
        f"schedule.warmup_steps/warmup_epochs must be >= 0, got {sched.warmup_steps}/"
        f"{sched.warmup_epochs}.",
    )
    _require(
        not (sched.warmup_steps and sched.warmup_epochs),
        "Set schedule.warmup_steps or schedule.warmup_epochs, not both.",
    )
    _require(
        not (sched.boundaries_steps and sched.boundaries_epochs),
        "Set schedule.boundaries_steps or schedule.boundaries_epochs, not both.",
    )
    _require(sched.timescale_steps > 0, "schedule.timescale_steps must be > 0.")
    _check_choice("loss", config.loss, LOSSES)
    _check_choice("compute_dtype", config.compute_dtype, COMPUTE_DTYPES)
    _check_choice("on_nonfinite", config.on_nonfinite, ON_NONFINITE)
    share = config.max_skipped_share
    _require(0 <= share <= 1, f"max_skipped_share must be in [0, 1], got {share}.")
    _require(0 <= config.label_smoothing < 1, "label_smoothing must be in [0, 1).")
    for key in ("mixup_alpha", "cutmix_alpha"):
        _require(config.mixup[key] >= 0, f"mixup.{key} must be >= 0, got {config.mixup[key]}.")
    k = config.grad_accum_steps
    _require(
        k >= 1 and config.batch_size % (k * num_devices) == 0,
        f"grad_accum_steps={k} must be >= 1 and batch_size={config.batch_size} divisible by "
        f"grad_accum_steps x devices ({k} x {num_devices}).",
    )
    b = config.parallel.batch_branches
    _require(
        b >= 0 and (b == 0 or config.batch_size % (k * b * num_devices) == 0),
        f"parallel.batch_branches={b} must be >= 0 (0 = auto) and batch_size="
        f"{config.batch_size} divisible by grad_accum_steps x batch_branches x devices "
        f"({k} x {b} x {num_devices}).",
    )


def _validate_distill(config: ml_collections.ConfigDict) -> None:
    """The `distill` section: a loss, a teacher source, a positive temperature, a weight."""
    d = config.distill
    _check_choice("distill.loss", d.loss, DISTILL_LOSSES)
    if d.loss == "none":
        return
    _require(
        bool(d.teacher),
        f"distill.loss={d.loss!r} needs distill.teacher: a workdir, catalog name, "
        "hf-hub:ORG/REPO[/FILE], URL or weights file.",
    )
    _require(d.temperature > 0, f"distill.temperature must be > 0, got {d.temperature}.")
    _require(0 <= d.weight <= 1, f"distill.weight must be in [0, 1], got {d.weight}.")
    _require(d.teacher_image_size >= 0, "distill.teacher_image_size must be >= 0 (0 = default).")
    _require(
        isinstance(d.teacher_model.get("name"), str),
        "distill.teacher_model.name must be a model name string ('' = the teacher's own).",
    )
    from jaxvision.models import pretrained_source

    pretrained_source.check_spec(d.teacher, d.teacher_model.name or None)
    if d.loss == "deit":
        from jaxvision import models

        overrides = {k: v for k, v in config.model.items() if k != "name"}
        try:
            models.create(config.model.name, num_classes=1, **overrides, distill_token=True)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"distill.loss='deit' needs a ViT student with pool='token' (a distillation "
                f"token beside the class token); {config.model.name} cannot take one: {e}. "
                "Use distill.loss='soft' or 'hard' for other models."
            ) from e
