"""The catalog of named pretrained checkpoints: `MODEL.TAG` -> model, overrides and source.

A name is `<registered model>.<tag>`, e.g. `vit_b16.augreg_in21k_ft_in1k`; the tag alone
is enough where the model is known (`models.create("vit_b16", pretrained="augreg_in21k")`).
Sources are the public vision_transformer and big_transfer buckets (`gs://vit_models`,
`gs://bit_models`: the files the google-research READMEs and timm's configs name) and
timm's Hugging Face Hub repositories. No entry records a size or checksum the publisher
does not give next to the file (neither bucket's README gives any): hub files are checked
against the hub's LFS SHA-256 at download, bucket files against the bucket's MD5 when it
sends one, and every cached file against the SHA-256 recorded when it was first verified.
"""

import dataclasses
from typing import Any

AUGREG_PAPER = "arXiv:2106.10270 (How to train your ViT)"
VIT_PAPER = "arXiv:2010.11929 (An Image is Worth 16x16 Words)"
BIT_PAPER = "arXiv:1912.11370 (Big Transfer (BiT))"
NOT_PUBLISHED = (
    "not published next to the file; verified against the server's checksum at download "
    "and the SHA-256 recorded then on every cache hit"
)


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One published checkpoint and how to build the model it fits."""

    name: str  # MODEL.TAG
    model: str  # a registered model name
    overrides: dict[str, Any]  # model constructor overrides the weights need
    image_size: int  # the resolution it was trained (or fine-tuned) at
    num_classes: int
    label_set: str  # "imagenet2012" (1000) or "imagenet21k" (21843)
    source: str  # gs://..., https://... or hf-hub:ORG/REPO/FILE
    preprocessing: str  # the normalisation op (jaxvision.data.preprocess) it expects
    paper: str
    size: int | None = None  # bytes, where the publisher gives it
    sha256: str | None = None  # where the publisher gives it
    checksum: str = NOT_PUBLISHED

    @property
    def tag(self) -> str:
        """The part after the model name: `augreg_in21k_ft_in1k`."""
        return self.name.split(".", 1)[1]


_BUCKET = "gs://vit_models/"
_BIT_BUCKET = "gs://bit_models/"  # google-research/big_transfer's public bucket
_MINUS1_1 = "value_range(-1,1)"
_IMAGENET_MEAN_STD = "normalize(imagenet)"

_AUGREG = {
    # model: (file prefix, fine-tune suffix), as in timm's vision_transformer configs.
    "vit_ti16": (
        "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
        "--imagenet2012-steps_20k-lr_0.03-res_224",
    ),
    "vit_s16": (
        "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
        "--imagenet2012-steps_20k-lr_0.03-res_224",
    ),
    "vit_b16": (
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
        "--imagenet2012-steps_20k-lr_0.01-res_224",
    ),
    "vit_b32": (
        "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0",
        "--imagenet2012-steps_20k-lr_0.03-res_224",
    ),
    "vit_l16": (
        "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1",
        "--imagenet2012-steps_20k-lr_0.01-res_224",
    ),
}


_CLASSES = {"imagenet21k": 21843, "imagenet2012": 1000}


def _entry(name: str, label_set: str, source: str, **fields: Any) -> CatalogEntry:
    """An entry whose model is the name's first part and class count its label set's."""
    model = name.split(".", 1)[0]
    fields.setdefault("overrides", {})
    num_classes = _CLASSES[label_set]
    return CatalogEntry(
        name, model, label_set=label_set, num_classes=num_classes, source=source, **fields
    )


def _in21k_and_ft_in1k(
    model: str,
    tag: str,
    upstream: str,
    finetuned: str,
    *,
    ft_image_size: int = 224,
    ft_suffix: str = "",
    upstream_overrides: dict[str, Any] | None = None,
    **common: Any,
) -> list[CatalogEntry]:
    """`MODEL.TAG_in21k` (pretrained on ImageNet-21k at 224 px) and its ImageNet-1k
    fine-tune `MODEL.TAG_in21k_ft_in1k[SUFFIX]` (at `ft_image_size`)."""
    return [
        _entry(
            f"{model}.{tag}_in21k",
            "imagenet21k",
            upstream,
            image_size=224,
            overrides=upstream_overrides or {},
            **common,
        ),
        _entry(
            f"{model}.{tag}_in21k_ft_in1k{ft_suffix}",
            "imagenet2012",
            finetuned,
            image_size=ft_image_size,
            **common,
        ),
    ]


def _augreg_entries() -> list[CatalogEntry]:
    out = []
    for model, (prefix, finetune) in _AUGREG.items():
        out += _in21k_and_ft_in1k(
            model,
            "augreg",
            f"{_BUCKET}augreg/{prefix}.npz",
            f"{_BUCKET}augreg/{prefix}{finetune}.npz",
            paper=AUGREG_PAPER,
            preprocessing=_MINUS1_1,
        )
    return out


def _other_entries() -> list[CatalogEntry]:
    return [
        *_in21k_and_ft_in1k(
            "r50_vit_b16",
            "orig",
            f"{_BUCKET}imagenet21k/R50+ViT-B_16.npz",
            f"{_BUCKET}imagenet21k+imagenet2012/R50+ViT-B_16.npz",
            ft_image_size=384,
            ft_suffix="_384",
            # The original in21k checkpoints carry a tanh pre-logits layer of the model's width.
            upstream_overrides={"representation_size": 768},
            paper=VIT_PAPER,
            preprocessing=_MINUS1_1,
        ),
        # BiT-HyperRule fine-tunes ImageNet-1k at 480 px (resize 512, crop 480).
        *_in21k_and_ft_in1k(
            "bit_r50x1",
            "bit_m",
            f"{_BIT_BUCKET}BiT-M-R50x1.npz",
            f"{_BIT_BUCKET}BiT-M-R50x1-ILSVRC2012.npz",
            ft_image_size=480,
            paper=BIT_PAPER,
            preprocessing=_MINUS1_1,
        ),
        _entry(
            "resnet50.a1_in1k",
            "imagenet2012",
            "hf-hub:timm/resnet50.a1_in1k/model.safetensors",
            image_size=224,
            preprocessing=_IMAGENET_MEAN_STD,
            paper="arXiv:2110.00476 (ResNet strikes back), procedure A1",
        ),
        _entry(
            "vit_b16.timm_augreg_in21k_ft_in1k",
            "imagenet2012",
            "hf-hub:timm/vit_base_patch16_224.augreg_in21k_ft_in1k/model.safetensors",
            # timm (PyTorch) computes the exact erf GELU.
            overrides={"gelu_approximate": False},
            image_size=224,
            preprocessing=_MINUS1_1,
            paper=AUGREG_PAPER + ", converted by timm",
        ),
    ]


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in _augreg_entries() + _other_entries()}


def entries() -> list[CatalogEntry]:
    """Every catalog entry, sorted by name."""
    return [CATALOG[k] for k in sorted(CATALOG)]


def find(name: str, model: str | None = None) -> CatalogEntry | None:
    """The entry called `name` (`MODEL.TAG`, or `TAG` when `model` is given), else None."""
    if name in CATALOG:
        return CATALOG[name]
    if model is not None and f"{model}.{name}" in CATALOG:
        return CATALOG[f"{model}.{name}"]
    return None


def format_table() -> str:
    """The catalog as an aligned text table (what `python -m jaxvision.models --pretrained`
    prints)."""
    rows = [("name", "model", "res", "classes", "labels", "source")]
    rows += [
        (e.name, e.model, str(e.image_size), str(e.num_classes), e.label_set, e.source)
        for e in entries()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    lines.append("")
    lines.append(f"Checksums: {NOT_PUBLISHED}.")
    return "\n".join(lines)
