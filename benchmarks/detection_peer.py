"""Side by side with a peer: ultralytics YOLOv8n and this project's detectors trained on the same YOLO data set,
with the same epochs, image size and batch size, scored by the same COCO evaluation; one table.

    PYTHONPATH=src python benchmarks/detection_peer.py \\
        --data data/real_photos/data.yaml --epochs 30 --img-size 160 --batch-size 16 \\
        --models cspdensenet_bc40_efm --output benchmarks/results/peer/real_photos

The peer runs in its own virtual environment, made by this script when it is missing (``--venv``,
default ``~/.cache/cspnet-peer/venv``): ``PEER_PACKAGES`` (torch 2.14.1 and torchvision 0.29.1, CUDA
builds that also run on a CPU, and ultralytics 8.4.190; about 6 GB). ultralytics is AGPL-3.0: it is
run as a separate program, never imported by cspnet, never a dependency of the package. YOLOv8n is
built from its yaml (``YOLO("yolov8n.yaml")``), from scratch: no weights are downloaded. It trains
with its own defaults (SGD/AdamW auto, mosaic, its warm-up and schedule) except ``device=cpu``,
``workers=0``, ``amp=False`` and ``plots=False``. The project's detectors train with the command a
user runs, ``cspnet detect train --data ... --epochs E --img-size S --batch-size B --model M`` and
its defaults (``--extra`` adds flags to every such run).

Both sides are scored the same way: the final weights (EMA for both) predict every validation image
at confidence 0.001, NMS IoU 0.6, at most 100 boxes (COCO's protocol, ``cspnet.ops.thresholds.EVALUATE``),
and faster-coco-eval computes mAP@.5 and mAP@[.5:.95] (``cspnet.detection.metrics.coco_metrics``);
for the project's runs that is the last validation of training (``metrics.json``). The peer's own
evaluator (its ``metrics/mAP50(B)``, on its best weights) is recorded beside it. Wall time is the whole
training command (start-up and imports, data, every epoch's validation; for the peer up to the end of
``model.train``, its final validation included), each run alone under the heavy lock on the same cores;
the load average and the CPU are recorded with each run.

Writes ``OUTPUT/<run>/`` (each run's folder), ``OUTPUT/peer.json`` (every figure) and ``OUTPUT/peer.md``
(the table). ``--skip-peer`` / ``--skip-ours`` rerun one side; results of the other side already in
``peer.json`` are kept.

This file is also the peer's runner: ``VENV/bin/python detection_peer.py --peer-run ...`` (stdlib
imports only at the top, so that the peer's interpreter never needs cspnet).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PEER_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "ultralytics==8.4.190")
PEER_MODEL = "yolov8n.yaml"
DEFAULT_VENV = Path(os.environ.get("CSPNET_PEER_VENV", Path.home() / ".cache" / "cspnet-peer" / "venv"))
DEFAULT_MODELS = ("cspdensenet_bc40_efm",)
# COCO's protocol, as cspnet.ops.thresholds.EVALUATE (copied here: the peer's interpreter has no cspnet).
EVAL_CONF, EVAL_IOU, EVAL_MAX = 0.001, 0.6, 100


# -- the machine -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The CPU and the load when a run starts (figures measured under load are marked in the docs)."""
    from cspnet.cpu import cpu_model  # the main process only: the peer's interpreter has no cspnet

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


# -- the peer's environment ------------------------------------------------------------------------
def ensure_peer_venv(venv: Path) -> Path:
    """The peer's interpreter, with :data:`PEER_PACKAGES` installed (made once, reused)."""
    python = venv / "bin" / "python"
    probe = "import ultralytics, torch, torchvision; print(torch.__version__, torchvision.__version__, ultralytics.__version__)"
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return python
    print(f"creating the peer's environment in {venv} ({', '.join(PEER_PACKAGES)}; about 6 GB)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--no-input", "-q", *PEER_PACKAGES], check=True)
    return python


def peer_versions(python: Path) -> str:
    probe = "import ultralytics, torch, torchvision; print(f'ultralytics {ultralytics.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}')"
    return subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


# -- inside the peer's interpreter ---------------------------------------------------------------------
def peer_run(args: argparse.Namespace) -> int:
    """Train YOLOv8n from its yaml on ``args.data`` and write its final weights' predictions (runs in the venv)."""
    start = time.perf_counter()  # the wall time counts ultralytics' import, as cspnet's counts its start-up
    import yaml  # type: ignore[import-untyped]  # ultralytics' dependency
    from ultralytics import YOLO  # type: ignore[import-not-found]

    out = Path(args.output)
    model = YOLO(PEER_MODEL)
    model.train(data=args.data, epochs=args.epochs, imgsz=args.img_size, batch=args.batch_size, device="cpu",
                workers=0, project=str(out), name="train", exist_ok=True, pretrained=False, amp=False, plots=False,
                seed=args.seed, deterministic=True, verbose=False)  # fmt: skip
    wall = time.perf_counter() - start
    own = {k: float(v) for k, v in (model.trainer.metrics or {}).items()}
    last = YOLO(str(out / "train" / "weights" / "last.pt"))
    config = yaml.safe_load(Path(args.data).read_text())
    root = Path(args.data).parent / config.get("path", ".")
    folder = root / config["val"]
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    predictions = []
    for path in images:
        result = last.predict(source=str(path), imgsz=args.img_size, conf=EVAL_CONF, iou=EVAL_IOU, max_det=EVAL_MAX,
                              device="cpu", verbose=False)[0]  # fmt: skip
        predictions.append({"file": str(path.resolve()), "boxes": result.boxes.xyxy.tolist(),
                            "scores": result.boxes.conf.tolist(), "labels": [int(c) for c in result.boxes.cls.tolist()]})  # fmt: skip
    params = sum(p.numel() for p in last.model.parameters())
    summary = {"wall_s": round(wall, 1), "params": params, "own_metrics": own, "predictions": predictions}
    (out / "peer_run.json").write_text(json.dumps(summary))
    return 0


# -- the two sides ---------------------------------------------------------------------------------
def run_peer(python: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    from cspnet.detection.data import read_yolo
    from cspnet.detection.metrics import coco_metrics

    out.mkdir(parents=True, exist_ok=True)
    command = [str(python), str(Path(__file__).resolve()), "--peer-run", "--data", str(Path(args.data).resolve()),
               "--epochs", str(args.epochs), "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
               "--seed", str(args.seed), "--output", str(out.resolve())]  # fmt: skip
    where = machine()
    start = time.perf_counter()
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run(command, check=True, env=env, cwd=out)
    command_s = time.perf_counter() - start
    run = json.loads((out / "peer_run.json").read_text())
    val = read_yolo(args.data, "val")
    by_file = {p["file"]: p for p in run["predictions"]}
    truth, found = [], []
    for record in val.records:
        p = by_file[str(Path(record.path).resolve())]
        truth.append({"boxes": record.boxes, "labels": record.labels})
        found.append({"boxes": torch.tensor(p["boxes"]).reshape(-1, 4), "scores": torch.tensor(p["scores"]),
                      "labels": torch.tensor(p["labels"], dtype=torch.long)})  # fmt: skip
    coco = coco_metrics(truth, found, val.classes)
    own = run["own_metrics"]
    return {"detector": "YOLOv8n (ultralytics, from yolov8n.yaml)", "params": run["params"], "map50": coco["map50"],
            "map": coco["map"], "wall_s": run["wall_s"], "with_predictions_s": round(command_s, 1),
            "own_map50": own.get("metrics/mAP50(B)"), "own_map": own.get("metrics/mAP50-95(B)"),
            "versions": peer_versions(python), "machine": where, "load_after": machine()["load_average"]}  # fmt: skip


def run_ours(model: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from cspnet.trained import load_trained

    command = [sys.executable, "-m", "cspnet.cli.main", "detect", "train", "--data", str(args.data), "--model", model,
               "--epochs", str(args.epochs), "--img-size", str(args.img_size), "--seed", str(args.seed),
               "--output", str(out), *args.extra]  # fmt: skip
    if args.ours_batch_size is not None:  # else the project's own default batch (what a user's command gets)
        command[command.index("--seed"):command.index("--seed")] = ["--batch-size", str(args.ours_batch_size)]
    if out.exists():  # this script's own run folder, from an earlier invocation
        shutil.rmtree(out)
    where = machine()
    start = time.perf_counter()
    subprocess.run(command, check=True)
    command_s = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    trained = load_trained(out / "last.ckpt", task="detection")
    params = sum(p.numel() for p in trained.model.parameters())
    return {"detector": model, "params": params, "map50": metrics["map50"], "map": metrics["map"],
            "train_time_s": metrics["train_time_s"], "wall_s": round(command_s, 1),
            "command": " ".join(["cspnet", *command[3:]]), "machine": where, "load_after": machine()["load_average"]}  # fmt: skip


# -- the table -------------------------------------------------------------------------------------
def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> list[str]:
    from cspnet.reports.tables import markdown_table

    rows = []
    for r in results["runs"]:
        own = f" (its own evaluator: {_num(r['own_map50'])} / {_num(r['own_map'])})" if "own_map50" in r else ""
        load = max(r["machine"]["load_average"][0], r["load_after"][0])
        rows.append([r["detector"], f"{r['params']:,}", _num(r["map50"]) + own, _num(r["map"]),
                     f"{r['wall_s']:.0f} s", f"{load:.1f}" + (" (under load)" if load > 2.5 else "")])  # fmt: skip
    settings = results["settings"]
    head = [f"Data: `{settings['data']}`; {settings['epochs']} epochs, image size {settings['img_size']}, "
            f"batch {settings['batch_size']} for the peer (its default 16) and "
            f"{settings.get('ours_batch_size') or 'the project default'} for cspnet, seed {settings['seed']}; CPU: {results['runs'][0]['machine']['cpu']} "
            f"({results['runs'][0]['machine']['cores']} cores). mAP by faster-coco-eval on the final weights' "
            "predictions (conf 0.001, NMS IoU 0.6, 100 per image).", ""]  # fmt: skip
    return head + markdown_table(["detector", "parameters", "mAP@.5", "mAP@[.5:.95]", "wall time", "load average"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a YOLO data.yaml with train and val (benchmarks/real_photos.py writes two)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ours-batch-size", type=int, default=None,
                   help="cspnet's batch (default: none given, the project's default for the data, as a user's command)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="the project's detectors to train")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags added to every `cspnet detect train` (last)")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peer's virtual environment (made if missing)")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--peer-run", action="store_true", help=argparse.SUPPRESS)  # inside the peer's interpreter
    args = p.parse_args(argv)
    if args.peer_run:
        return peer_run(args)

    args.output.mkdir(parents=True, exist_ok=True)
    report = args.output / "peer.json"
    settings = {k: getattr(args, k) for k in ("data", "epochs", "img_size", "batch_size", "ours_batch_size", "seed", "models", "extra")}
    previous = json.loads(report.read_text()) if report.is_file() else {}
    if previous and previous.get("settings") != settings:
        previous = {}  # other settings: nothing to keep
    runs = {r["detector"]: r for r in previous.get("runs", [])}
    if not args.skip_peer:
        run = run_peer(ensure_peer_venv(args.venv), args, args.output / "yolov8n")
        runs[run["detector"]] = run
    if not args.skip_ours:
        for model in args.models:
            run = run_ours(model, args, args.output / model)
            runs[run["detector"]] = run
    results = {"settings": settings, "runs": list(runs.values())}
    report.write_text(json.dumps(results, indent=2) + "\n")
    lines = table(results)
    (args.output / "peer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
