"""Transfer learning for the small detector on the embedded digits, measured (not a test: it takes a while).

Two questions, each answered by a few ``cspnet`` command lines run in processes of their own:

* ``pretrain``: does a backbone first trained on the digits *classification* task help the detector?
  ``cspnet train`` trains the detector's backbone (``cspdensenet_bc40`` built as the detector builds
  it: ``--set small_input=False``) on the 8x8 digits at 32 px; then the detector trains for
  ``--epochs`` from scratch, from that backbone (``--pretrained-backbone``), and from that backbone
  frozen for the first epoch (``--freeze backbone --freeze-epochs 1``): the same detection budget.
* ``finetune``: which learning rate fine-tunes a trained detector (``--checkpoint``) on the same
  classes for two epochs without losing what it knew: the default of a new run, and lower ones.

    flock /work/plan/heavy.lock env PYTHONPATH=src python benchmarks/detection_transfer.py pretrain \\
        --epochs 4 --output benchmarks/results/transfer
    flock /work/plan/heavy.lock env PYTHONPATH=src python benchmarks/detection_transfer.py finetune \\
        --checkpoint runs/detect/best.ckpt --output benchmarks/results/transfer

Each part writes its runs to ``<output>/<part>.json`` (commands, metrics, wall time, load average,
CPU); runs already there are kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from detection_recipe import load_average  # noqa: E402  (the sibling benchmark's helper)

from cspnet.cpu import cpu_model  # noqa: E402

BACKBONE = ["--model", "cspdensenet_bc40", "--set", "small_input=False"]


def run(argv: list[str], out: Path, name: str, runs: list[dict]) -> dict:
    """Run ``cspnet argv`` (unless ``name`` is in ``runs``); its metrics.json with the run's facts."""
    done = next((r for r in runs if r["name"] == name and "error" not in r), None)
    if done is not None:
        return done
    folder = out / "runs" / name
    argv = [*argv, "--output", str(folder)]
    print(f"{name}: cspnet {' '.join(argv)}", flush=True)
    before, started = load_average(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cspnet.cli.main", *argv], capture_output=True, text=True)
    result = {"name": name, "command": "cspnet " + " ".join(argv), "wall_s": round(time.perf_counter() - started, 1),
              "load_before": before, "load_after": load_average(), "cpu": cpu_model()}  # fmt: skip
    if proc.returncode != 0:
        result["error"] = proc.stderr.strip().splitlines()[-1:]
    else:
        result["metrics"] = json.loads((folder / "metrics.json").read_text())
    print(f"  {json.dumps({k: result.get('metrics', {}).get(k) for k in ('map50', 'map', 'top1')})}", flush=True)
    runs[:] = [r for r in runs if r["name"] != name] + [result]
    return result


def pretrain(args: argparse.Namespace, runs: list[dict]) -> None:
    classifier = ["train", *BACKBONE, "--img-size", "32", "--epochs", str(args.classifier_epochs),
                  "--checkpoint-every", "0"]  # fmt: skip
    run(classifier, args.output, "classifier", runs)
    weights = args.output / "runs" / "classifier" / "best.ckpt"
    detect = ["detect", "train", "--epochs", str(args.epochs), "--seed", str(args.seed), "--checkpoint-every", "0"]
    run(detect, args.output, f"scratch-seed{args.seed}", runs)
    run([*detect, "--pretrained-backbone", str(weights)], args.output, f"pretrained-seed{args.seed}", runs)
    run([*detect, "--pretrained-backbone", str(weights), "--freeze", "backbone", "--freeze-epochs", "1"],
        args.output, f"pretrained-frozen1-seed{args.seed}", runs)  # fmt: skip


def finetune(args: argparse.Namespace, runs: list[dict]) -> None:
    if args.checkpoint is None:
        raise SystemExit("finetune needs --checkpoint (a detector trained on the digits)")
    base = ["detect", "train", "--pretrained", str(args.checkpoint), "--epochs", "2", "--seed", str(args.seed),
            "--checkpoint-every", "0"]  # fmt: skip
    for lr in args.lrs:
        run([*base, "--lr", lr], args.output, f"finetune-lr{lr}", runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("pretrain", "finetune"))
    p.add_argument("--epochs", type=int, default=4, help="pretrain: detection epochs of each run")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--checkpoint", type=Path, help="finetune: the trained detector")
    p.add_argument("--lrs", nargs="+", default=["0.01", "0.001", "0.0003"], help="finetune: learning rates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    report = args.output / f"{args.part}.json"
    runs: list[dict] = json.loads(report.read_text()) if report.is_file() else []
    try:
        (pretrain if args.part == "pretrain" else finetune)(args, runs)
    finally:
        report.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
