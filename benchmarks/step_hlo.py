"""Writes a config's compiled train step as XLA HLO text without source locations.

    cd TREE_A && python /path/to/benchmarks/step_hlo.py \
        --config=benchmarks/peer_configs.py:vit_ti4_cifar --out=/tmp/a.hlo
    cd TREE_B && python /path/to/benchmarks/step_hlo.py ... --out=/tmp/b.hlo
    diff /tmp/a.hlo /tmp/b.hlo

Two trees of the project (e.g. before and after a refactor) compile the same program when
the two files are equal: the train step is built as `jaxvision.benchmark` builds it (the
one step factory), compiled for this machine, and printed with metadata, the stack-frame
tables and instruction-number suffixes removed, so that only the operations, their shapes,
layouts and fusions remain. A speed difference between two trees whose files are equal is
in the process around the step (or in the measurement), not in the step. Run it from the
tree to compare: it imports the `jaxvision` found first on `sys.path`.
"""

import argparse
import importlib.util
import re
import sys


def normalized_hlo(text: str) -> str:
    """`text` without metadata, stack frames, file tables and numeric name suffixes."""
    lines = []
    body = False
    for line in text.splitlines():
        if line.startswith("HloModule"):
            body = True
        if not body or re.match(r"^\d+ ", line) or not line.strip():
            continue  # the file, function and frame tables before and after the module
        line = re.sub(r", metadata=\{[^}]*\}", "", line)
        line = re.sub(r"(stack_)?frame_id=\d+", "", line)
        lines.append(re.sub(r"\.\d+", "", line))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="FILE.py[:ARG], as for the benchmark.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--out", required=True, help="Where to write the normalized HLO.")
    args = parser.parse_args()

    path, _, arg = args.config.partition(":")
    spec = importlib.util.spec_from_file_location("step_hlo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.batch_size = args.batch_size

    from jaxvision import benchmark

    bench = benchmark.Bench(config, materialize=False)
    compiled = bench.train_fn.lower(bench.abstract_state, bench.abstract_batch).compile()
    with open(args.out, "w") as f:
        f.write(normalized_hlo(compiled.as_text()))
    print(f"{args.out}: the compiled train step of {args.config}", file=sys.stderr)


if __name__ == "__main__":
    main()
