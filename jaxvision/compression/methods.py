"""The compression methods `--method` names, parsed and checked before anything runs."""

import dataclasses
import re

METHODS = (
    "prune:S (0 < S < 1)",
    "prune:N:M (e.g. prune:2:4)",
    "int8-weights",
    "int8 (static activation scales, --calibration_batches)",
    "int8-dynamic",
)
# Quantization methods and the `config.quantization.mode` of the model they write.
QUANTIZE = {"int8-weights": "none", "int8": "ptq-static", "int8-dynamic": "ptq-dynamic"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One step of a compression recipe."""

    kind: str  # "prune" or a key of QUANTIZE
    sparsity: float = 0.0  # prune:S
    n: int = 0  # prune:N:M
    m: int = 0

    @property
    def name(self) -> str:
        """The method string as the user spells it."""
        if self.kind != "prune":
            return self.kind
        return f"prune:{self.n}:{self.m}" if self.m else f"prune:{self.sparsity:g}"

    @property
    def structure(self) -> str:
        """`config.pruning.structure` for a prune method: "unstructured" or "N:M"."""
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"Bad compression method {spec!r}: {why}. Methods: {', '.join(METHODS)}.")


def parse_one(spec: str) -> Method:
    """One method string -> Method; ValueError listing the methods otherwise."""
    if spec in QUANTIZE:
        return Method(spec)
    match = re.fullmatch(r"prune:(\d+):(\d+)", spec)
    if match:
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise _bad(spec, "N:M needs 0 < N < M")
        return Method("prune", sparsity=1 - n / m, n=n, m=m)
    match = re.fullmatch(r"prune:([0-9.]+)", spec)
    if match:
        try:
            sparsity = float(match[1])
        except ValueError:
            raise _bad(spec, "the sparsity is not a number") from None
        if not 0 < sparsity < 1:
            raise _bad(spec, "the sparsity must be between 0 and 1")
        return Method("prune", sparsity=sparsity)
    raise _bad(spec, "unknown method")


def parse(spec: str) -> list[Method]:
    """ "prune:0.5,int8" -> methods applied in that order: at most one prune and one
    quantization method, the prune first."""
    methods = [parse_one(s.strip()) for s in spec.split(",") if s.strip()]
    if not methods:
        raise _bad(spec, "no method given")
    kinds = ["quantize" if m.kind in QUANTIZE else m.kind for m in methods]
    if len(set(kinds)) != len(kinds):
        raise _bad(spec, "at most one prune and one quantization method")
    if kinds == ["quantize", "prune"]:
        raise _bad(spec, f"prune before {methods[0].name}: the fine-tune trains float weights")
    return methods
