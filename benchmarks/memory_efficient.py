"""Peak training memory of DenseNet-201 / CSPDenseNet-201 with and without ``memory_efficient``.

Each configuration runs in a fresh process (``cspnet.cli.benchmark.measure_isolated``): the peak is the
resident-set high-water mark added by one warm-up and one timed training step (forward, loss,
backward, SGD update) at batch 32, 224x224, fp32, on the CPU. Writes
``benchmarks/results/memory_efficient.json``; ``benchmarks/write_docs.py`` turns it into the table in
``docs/benchmarks.md``.

    .venv/bin/python benchmarks/memory_efficient.py [--batch-size 32] [--models densenet201 cspdensenet201]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cspnet.cli.benchmark import BenchSpec, measure_isolated

RESULTS = Path(__file__).parent / "results" / "memory_efficient.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["densenet201", "cspdensenet201"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = []
    for name in args.models:
        for efficient in (False, True):
            spec = BenchSpec(
                model=name, mode="train", batch_size=args.batch_size, img_size=args.img_size,
                channels_last=False, overrides={"memory_efficient": efficient},
                warmup=1, min_steps=1, min_seconds=0.0,
            )  # fmt: skip
            result = measure_isolated(spec)
            print(f"{name} memory_efficient={efficient}: peak +{result['peak_mib']:.0f} MiB, "
                  f"{result['img_per_s']:.2f} img/s", flush=True)  # fmt: skip
            results.append(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
