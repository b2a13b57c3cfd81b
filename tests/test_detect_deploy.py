"""Detectors to production: one image-level API on every engine, self-describing detector files, int8,
videos, COCO results with the data's own ids, weights files with --model/--names.

A tiny detector is trained once (COCO-format data with odd image and category ids, so that every id
that reaches a results file can be told from a class index or a counter)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cspnet.cli.main import main
from detection_data import make_shapes

ENGINES = ("torch", "onnxruntime", "openvino")
CATEGORY_IDS = [5, 9, 17]  # red, green, blue: neither 0-based nor 1..N
IMAGE_ID_BASE = 1000
CONF = 0.005  # the tiny detector's scores are low; fewer than max_candidates pairs stay above this


def shapes_as_coco(root: Path, count: int) -> Path:
    """The shapes set (YOLO) as a COCO instances file with odd image and category ids."""
    make_shapes(root, count)
    names = ["red", "green", "blue"]
    images, annotations = [], []
    for i in range(count):
        images.append({"id": IMAGE_ID_BASE + i, "file_name": f"{i}.png", "width": 64, "height": 64})
        for line in (root / "labels" / f"{i}.txt").read_text().splitlines():
            c, cx, cy, w, h = (float(v) for v in line.split())
            annotations.append({"id": len(annotations) + 1, "image_id": IMAGE_ID_BASE + i,
                                "category_id": CATEGORY_IDS[int(c)], "iscrowd": 0, "area": w * h * 64 * 64,
                                "bbox": [(cx - w / 2) * 64, (cy - h / 2) * 64, w * 64, h * 64]})  # fmt: skip
    categories = [{"id": cid, "name": name} for cid, name in zip(CATEGORY_IDS, names)]
    path = root / "images" / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A `detect train` checkpoint on COCO data, its data, and its export (no NMS and NMS)."""
    root = tmp_path_factory.mktemp("deploy")
    coco = shapes_as_coco(root / "shapes", 6)
    out = root / "run"
    assert main(["detect", "train", "--data", str(coco), "--val-data", str(coco), "--set", "neck_widths=(16, 32, 64)",
                 "--img-size", "64", "--epochs", "2", "--batch-size", "3", "--lr", "0.002",  # a gentle start: scores
                 "--output", str(out)]) == 0  # that do not saturate at 1.0 (ties an engine may order its own way)  # fmt: skip
    ckpt = out / "last.ckpt"
    onnx_file, nms_file = root / "det.onnx", root / "det-nms.onnx"
    assert main(["detect", "export", "--checkpoint", str(ckpt), "--output", str(onnx_file)]) == 0
    assert main(["detect", "export", "--checkpoint", str(ckpt), "--output", str(nms_file), "--nms", "--conf", "0.01"]) == 0
    return {"ckpt": ckpt, "coco": coco, "images": coco.parent, "onnx": onnx_file, "nms": nms_file, "root": root}


def photos(run: dict[str, Path]) -> list[np.ndarray]:
    """Inputs of other sizes than the model's: the letterbox has work to do."""
    return [np.asarray(Image.open(run["images"] / f"{i}.png").resize(size))
            for i, size in ((0, (128, 96)), (1, (50, 90)), (2, (64, 64)))]  # fmt: skip


def _sorted(found) -> tuple[np.ndarray, list[str]]:
    """Rows (label, box) in a fixed order: engines may order equal-looking scores differently."""
    order = np.lexsort((found.boxes[:, 1], found.boxes[:, 0], found.class_ids))
    return found.boxes[order], [found.class_names[i] for i in order]


# -- 1. one API, every engine --------------------------------------------------------------------------
def test_the_checkpoint_gives_the_same_detections_on_every_engine(run):
    from cspnet.inference import DetectionModel, load_model

    results = {}
    for engine in ENGINES:
        model = load_model(run["ckpt"], engine)
        assert isinstance(model, DetectionModel) and model.info.category_ids == tuple(CATEGORY_IDS)
        # Every survivor of NMS (no top-k cut where near-equal scores could swap across engines).
        results[engine] = model.detect(photos(run), conf_threshold=CONF, max_detections=300)
    reference = results["torch"]
    assert sum(len(d) for d in reference) > 0, "the test needs detections to compare"
    for engine in ENGINES[1:]:
        for want, got in zip(reference, results[engine]):
            assert got.image_size == want.image_size
            (want_boxes, want_names), (got_boxes, got_names) = _sorted(want), _sorted(got)
            assert got_names == want_names, engine
            np.testing.assert_allclose(got_boxes, want_boxes, rtol=1e-3, atol=1e-3 * max(want.image_size))


def test_boxes_are_in_the_original_images_pixels(run):
    from cspnet.inference import load_model

    model = load_model(run["ckpt"])
    for image, found in zip(photos(run), model.detect(photos(run), conf_threshold=0.001)):
        height, width = image.shape[:2]
        assert found.image_size == (width, height)
        assert (found.boxes[:, 0] >= 0).all() and (found.boxes[:, 2] <= width + 1e-3).all()
        assert (found.boxes[:, 1] >= 0).all() and (found.boxes[:, 3] <= height + 1e-3).all()
        assert (np.diff(found.scores) <= 0).all() and set(found.class_names) <= {"red", "green", "blue"}


def test_detect_takes_paths_pil_images_arrays_and_lists_alike(run):
    from cspnet.inference import load_model

    model = load_model(run["ckpt"])
    path = run["images"] / "0.png"
    forms = [str(path), path, Image.open(path), np.asarray(Image.open(path)), [path], np.asarray(Image.open(path))[None]]
    results = [model.detect(form, conf_threshold=0.01)[0] for form in forms]
    for found in results[1:]:
        np.testing.assert_allclose(found.boxes, results[0].boxes, rtol=1e-6)
        assert found.class_names == results[0].class_names
    assert results[0].source == str(path) and results[2].source is None


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4, 2), dtype=np.uint8), 3.5,
                                 "missing.png"], ids=["float", "two-channels", "number", "missing"])  # fmt: skip
def test_detect_refuses_what_is_no_image_in_one_line(run, bad):
    from cspnet.inference import load_model

    model = load_model(run["ckpt"])
    with pytest.raises(ValueError) as caught:
        model.detect(bad)
    assert "\n" not in str(caught.value)


def test_classes_keeps_those_classes_only(run):
    from cspnet.inference import load_model

    model = load_model(run["ckpt"])
    everything = model.detect(photos(run), conf_threshold=CONF)
    blue = model.detect(photos(run), conf_threshold=CONF, classes=[2])
    assert sum(len(b) for b in blue) > 0
    for all_found, only in zip(everything, blue):
        # class-aware NMS: another class's boxes never suppress these, so they are the same blue boxes
        np.testing.assert_allclose(only.boxes, all_found.boxes[all_found.class_ids == 2])
        assert set(only.class_names) <= {"blue"}


# -- 2. self-describing files --------------------------------------------------------------------------
def test_the_exported_file_carries_the_detectors_contract(run):
    from cspnet.metadata import read_onnx_info

    info = read_onnx_info(run["onnx"])
    assert info.task == "detection" and info.class_names == ("red", "green", "blue")
    assert info.img_size == 64 and info.resize == "letterbox" and info.pad_value == 114
    assert info.strides == (4, 8, 16) and len(info.anchors) == 9 and info.output == "boxes_scores"
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)
    assert info.category_ids == tuple(CATEGORY_IDS) and info.thresholds.conf_threshold == 0.25
    nms = read_onnx_info(run["nms"])
    assert nms.output == "detections" and nms.thresholds.conf_threshold == 0.01


@pytest.mark.parametrize("engine", ENGINES[1:])
@pytest.mark.parametrize("kind", ["onnx", "nms"])
def test_an_exported_file_detects_as_its_checkpoint(run, engine, kind):
    from cspnet.inference import load_model

    want = load_model(run["ckpt"]).detect(photos(run), conf_threshold=0.01, max_detections=300)
    got = load_model(run[kind], engine).detect(photos(run), conf_threshold=0.01, max_detections=300)
    for w, g in zip(want, got):
        (wb, wn), (gb, gn) = _sorted(w), _sorted(g)
        assert gn == wn
        np.testing.assert_allclose(gb, wb, rtol=1e-3, atol=0.1)


def test_a_file_with_nms_inside_refuses_thresholds_it_cannot_honour(run):
    from cspnet.inference import load_model

    model = load_model(run["nms"], "onnxruntime")
    with pytest.raises(ValueError, match="export it without NMS"):
        model.detect(photos(run), conf_threshold=0.001)
    assert len(model.detect(photos(run), conf_threshold=0.5)) == 3  # stricter than the graph's: applied after it


@pytest.mark.parametrize(("changes", "message"), [
    ({"class_names": '["a", "b"]', "category_ids": "[1, 2]"}, "does not belong to this graph"),
    ({"img_size": "128"}, "does not belong to this graph"),
    ({"strides": "[8, 16, 32]"}, "does not belong to this graph"),
    ({"output": "detections"}, "does not belong to this graph"),
    ({"pad_value": "300"}, "pad_value 300 is invalid"),
    ({"anchors": "[[1, 2], [3]]"}, "anchors"),
    ({"thresholds": '{"conf_threshold": 2}'}, "thresholds"),
    ({"category_ids": "[1, 1, 2]"}, "category_ids"),
    ({"resize": "stretch_bilinear"}, "it takes 'letterbox'"),
])  # fmt: skip
def test_detector_metadata_that_contradicts_the_graph_or_itself_is_one_line(run, tmp_path, changes, message):
    import onnx

    from cspnet.inference import load_model

    proto = onnx.load(str(run["onnx"]))
    kept = {p.key: p.value for p in proto.metadata_props}
    del proto.metadata_props[:]
    for key, value in {**kept, **changes}.items():
        proto.metadata_props.add(key=key, value=value)
    path = tmp_path / "edited.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError) as caught:
        load_model(path, "onnxruntime")
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_a_detector_file_without_metadata_still_loads_with_a_warning(run, tmp_path, caplog):
    import onnx

    from cspnet.inference import load_model

    proto = onnx.load(str(run["onnx"]))
    del proto.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(proto, str(path))
    model = load_model(path, "onnxruntime")
    assert model.info.class_names == ("0", "1", "2") and "no cspnet metadata" in caplog.text
    assert len(model.detect(photos(run), conf_threshold=0.01)) == 3


# -- 3. the commands: val of every form, weights files ------------------------------------------------------
def _val(argv: list[str], out: Path) -> dict:
    assert main(["detect", "val", *argv, "--output", str(out)]) == 0
    return json.loads((out / "val.json").read_text())


@pytest.mark.parametrize("engine", ENGINES[1:])
def test_val_of_an_exported_file_gives_its_checkpoints_map(run, tmp_path, engine):
    data = ["--data", str(run["coco"])]
    want = _val(["--checkpoint", str(run["ckpt"]), *data], tmp_path / "ckpt")
    got = _val(["--checkpoint", str(run["onnx"]), "--backend", engine, *data], tmp_path / engine)
    assert got["backend"] == engine and got["images"] == want["images"] == 6
    assert abs(got["map"] - want["map"]) <= 0.005 and abs(got["map50"] - want["map50"]) <= 0.005


def test_evaluate_takes_a_pytorch_detector_or_a_loaded_model_alike(run):
    from cspnet.evaluation import evaluate, evaluation_set
    from cspnet.inference import load_model
    from cspnet.trained import load_trained

    trained = load_trained(run["ckpt"])
    data = evaluation_set("detection", {}, 64, trained.class_names, str(run["coco"]))
    plain = evaluate(trained.model, data, class_names=trained.class_names).metrics
    loaded = evaluate(load_model(run["ckpt"]), data).metrics
    assert plain["map"] is not None and abs(plain["map"] - loaded["map"]) < 1e-6
    assert plain["per_class"] == loaded["per_class"]


def test_val_classes_scores_those_classes_and_save_txt_writes_yolo_labels(run, tmp_path):
    result = _val(["--checkpoint", str(run["ckpt"]), "--data", str(run["coco"]), "--classes", "blue", "0",
                   "--save-txt"], tmp_path)  # fmt: skip
    assert result["classes"] == [0, 2] and result["per_class"]["green"] is None
    labels = sorted((tmp_path / "labels").glob("*.txt"))
    assert [p.stem for p in labels] == [str(i) for i in range(6)]
    for line in "".join(p.read_text() for p in labels).splitlines():
        k, *box = line.split()
        assert k in ("0", "2") and all(0 <= float(v) <= 1 for v in box)


def _darknet_file(model: torch.nn.Module, path: Path) -> Path:
    """``model``'s weights in darknet's order (the layout the one reader reads), header 0.2.5."""
    from cspnet.convert.darknet import DarknetConv, darknet_layout

    state, chunks = model.state_dict(), []
    for layer in darknet_layout(model).layers:
        if isinstance(layer, DarknetConv):
            weight = state[f"{layer.name}.conv.weight"]
            if layer.rotate_in:
                weight = torch.cat([weight[:, -layer.rotate_in :], weight[:, : -layer.rotate_in]], dim=1)
            start = 0
            for rows in layer.row_splits:
                for key in ("bias", "weight", "running_mean", "running_var"):
                    chunks.append(state[f"{layer.name}.bn.{key}"][start : start + rows])
                chunks.append(weight[start : start + rows].flatten())
                start += rows
        elif layer.model_rows:
            chunks += [state[f"{layer.name}.bias"], state[f"{layer.name}.weight"].flatten()]
    payload = torch.cat([c.detach().float().flatten() for c in chunks]).numpy().tobytes()
    path.write_bytes(struct.pack("<3iq", 0, 2, 5, 0) + payload)
    return path


def test_darknet_weights_with_model_and_names_run_val_predict_and_export(run, tmp_path, capsys):
    """The path of `detect val --model cspresnext50_panet_spp --checkpoint *.weights --names coco` (see the
    README), on a small detector darknet's format describes and a synthetic .weights file."""
    import cspnet
    from cspnet.inference import load_model

    torch.manual_seed(0)
    model = cspnet.create_model("csppeleenet_fpn", num_classes=3).eval()
    weights = _darknet_file(model, tmp_path / "peleenet.weights")
    names = tmp_path / "shapes.names"
    names.write_text("red\ngreen\nblue\n")
    again = cspnet.create_model("csppeleenet_fpn", num_classes=3, pretrained=weights)
    for key, value in model.state_dict().items():  # the synthetic file holds exactly the model's weights
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(again.state_dict()[key], value), key
    loaded = load_model("csppeleenet_fpn", weights=weights, class_names=str(names), img_size=64)
    own = loaded.engine.module.network  # folded: equal to the model up to rounding, relative to the output scale
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), own(x.contiguous(memory_format=torch.channels_last))):
            assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    common = ["--model", "csppeleenet_fpn", "--checkpoint", str(weights), "--names", str(names), "--img-size", "64"]
    result = _val([*common, "--data", str(run["coco"])], tmp_path / "val")
    assert result["model"] == "csppeleenet_fpn" and result["images"] == 6
    assert main(["detect", "predict", str(run["images"] / "0.png"), *common, "--conf", "0.001", "--output",
                 str(tmp_path / "pred")]) == 0  # fmt: skip
    out = tmp_path / "det.onnx"
    assert main(["detect", "export", "csppeleenet_fpn", "--checkpoint", str(weights), "--names", str(names),
                 "--img-size", "64", "--output", str(out)]) == 0  # fmt: skip
    assert "checked in onnxruntime" in capsys.readouterr().out
    assert load_model(out, "onnxruntime").info.class_names == ("red", "green", "blue")


def test_names_coco_gives_cocos_classes_and_category_ids(tmp_path):
    from cspnet.detection.coco import COCO_CATEGORY_IDS, COCO_NAMES
    from cspnet.inference import load_model

    model = load_model("cspdensenet_bc40_efm", class_names="coco", img_size=64)
    assert model.info.class_names == COCO_NAMES and model.info.category_ids == COCO_CATEGORY_IDS


# -- 4. predict: sources, outputs, COCO ids -------------------------------------------------------------------
def test_predict_reads_folders_globs_and_lists_once_each_in_order(run, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.open(run["images"] / f"{i}.png").save(folder / ("sub" if i == 2 else ".") / f"p{i}.png")
    listed = tmp_path / "list.txt"
    listed.write_text(f"in/p0.png\n\n{folder / 'sub' / 'p2.png'}\n")
    from cspnet.detection.sources import collect_sources

    assert [s.path.name for s in collect_sources([str(folder)])] == ["p0.png", "p1.png", "p2.png"]
    assert [s.path.name for s in collect_sources([str(folder / "*.png")])] == ["p0.png", "p1.png"]
    assert [s.path.name for s in collect_sources([str(folder / "**" / "*.png")])] == ["p0.png", "p1.png", "p2.png"]
    assert [s.path.name for s in collect_sources([str(listed)])] == ["p0.png", "p2.png"]
    out = tmp_path / "out"
    assert main(["detect", "predict", str(folder / "*.png"), str(listed), "--checkpoint", str(run["ckpt"]),
                 "--output", str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png", "p0_.png", "p1.png", "p2.png"]


@pytest.mark.parametrize(("argv", "message"), [
    (["nothing/*.png"], "no files match"),
    (["missing.png"], "image not found"),
])  # fmt: skip
def test_predict_sources_that_name_nothing_are_one_line(run, tmp_path, capsys, argv, message):
    assert main(["detect", "predict", *[str(tmp_path / a) for a in argv], "--checkpoint", str(run["ckpt"])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_results_json_is_coco_results_with_the_datas_ids_one_per_line(run, tmp_path):
    from faster_coco_eval import COCO

    out = tmp_path / "out"
    images = [str(run["images"] / f"{i}.png") for i in range(6)]
    assert main(["detect", "predict", *images, "--checkpoint", str(run["ckpt"]), "--data", str(run["coco"]),
                 "--conf", "0.001", "--output", str(out)]) == 0  # fmt: skip
    text = (out / "results.json").read_text()
    rows = json.loads(text)
    assert rows and len(text.strip().splitlines()) == len(rows) + 2  # "[", one row per line, "]"
    assert {r["image_id"] for r in rows} <= {IMAGE_ID_BASE + i for i in range(6)}
    assert {r["category_id"] for r in rows} <= set(CATEGORY_IDS)
    truth = COCO(str(run["coco"]))
    truth.loadRes(rows)  # COCO's own reader takes it as results of this data set
    # Without --data: the checkpoint's recorded category ids, images numbered in input order.
    assert main(["detect", "predict", images[0], "--checkpoint", str(run["ckpt"]), "--conf", "0.001", "--output",
                 str(tmp_path / "plain")]) == 0  # fmt: skip
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert {r["image_id"] for r in plain} == {0} and {r["category_id"] for r in plain} <= set(CATEGORY_IDS)


def test_save_txt_save_crops_and_classes(run, tmp_path):
    out = tmp_path / "out"
    source = run["images"] / "1.png"
    assert main(["detect", "predict", str(source), "--checkpoint", str(run["ckpt"]), "--conf", "0.001",
                 "--max-detections", "5", "--classes", "red", "green", "--save-txt", "--save-crops", "--output",
                 str(out)]) == 0  # fmt: skip
    lines = (out / "labels" / "1.txt").read_text().splitlines()
    assert 0 < len(lines) <= 5 and {line.split()[0] for line in lines} <= {"0", "1"}
    crops = sorted((out / "crops").rglob("*.jpg"))
    assert crops and {p.parent.name for p in crops} <= {"red", "green"}
    assert all(Image.open(p).size[0] >= 1 for p in crops)


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 5) -> Path:
    from cspnet.detection.sources import VideoWriter

    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_predict_on_a_video_writes_an_annotated_video_and_per_frame_json(run, tmp_path):
    pytest.importorskip("av")
    from cspnet.detection.sources import VideoReader

    frames = [np.asarray(Image.open(run["images"] / f"{i % 6}.png").resize((96, 72))) for i in range(7)]
    video = _write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "out"
    assert main(["detect", "predict", str(video), "--checkpoint", str(run["ckpt"]), "--conf", "0.01", "--save-txt",
                 "--output", str(out)]) == 0  # fmt: skip
    annotated = VideoReader(out / "clip.mp4")
    assert annotated.fps == pytest.approx(5) and len(list(annotated)) == 7
    text = (out / "clip.json").read_text()
    result = json.loads(text)
    assert result["frames"] == 7 and [f["frame"] for f in result["per_frame"]] == list(range(7))
    assert len(text.splitlines()) >= 7  # one frame per line
    for frame in result["per_frame"]:
        for d in frame["detections"]:
            x1, y1, x2, y2 = d["bbox"]
            assert 0 <= x1 <= x2 <= 96.01 and 0 <= y1 <= y2 <= 72.01 and d["category"] in ("red", "green", "blue")
    assert len(list((out / "labels").glob("clip_*.txt"))) == 7
    assert not (out / "results.json").exists()  # COCO results are for images


def test_a_file_that_is_no_video_is_one_line(run, tmp_path, capsys):
    pytest.importorskip("av")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    assert main(["detect", "predict", str(bad), "--checkpoint", str(run["ckpt"]), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read video" in err and len(err.splitlines()) == 1


# -- 5. int8 ---------------------------------------------------------------------------------------------------
def test_int8_export_is_calibrated_on_the_users_images_and_says_what_it_costs(run, tmp_path, capsys):
    from cspnet.inference import load_model

    out = tmp_path / "det-int8.onnx"
    assert main(["detect", "export", "--checkpoint", str(run["ckpt"]), "--output", str(out), "--int8",
                 "--calibration-data", str(run["coco"]), "--calibration-images", "3"]) == 0  # fmt: skip
    summary = capsys.readouterr().out
    assert "int8 calibrated on 3 images" in summary and "int8 costs" in summary
    for engine in ENGINES[1:]:
        model = load_model(out, engine)
        assert model.precision == "int8" and model.info.category_ids == tuple(CATEGORY_IDS)
        assert len(model.detect(photos(run), conf_threshold=0.01)) == 3


def test_test_time_augmentation_runs_on_every_engine_and_an_nms_file_refuses_it(run):
    """--augment goes through DetectionModel.detect_letterboxed: the same views and merge on every engine."""
    from cspnet.inference import load_model

    found = {}
    for engine in ENGINES:
        model = load_model(run["ckpt"], engine)
        found[engine] = model.detect(photos(run), conf_threshold=CONF, augment=True)
    for engine in ENGINES[1:]:
        for a, b in zip(found["torch"], found[engine]):
            (boxes_a, names_a), (boxes_b, names_b) = _sorted(a), _sorted(b)
            assert names_a == names_b
            np.testing.assert_allclose(boxes_b, boxes_a, rtol=1e-3, atol=0.1)
    plain = load_model(run["ckpt"], "torch").detect(photos(run), conf_threshold=CONF)
    assert any(len(a) != len(p) for a, p in zip(found["torch"], plain))  # the views add candidates
    with pytest.raises(ValueError, match="export it without --nms to use --augment"):
        load_model(run["nms"], "onnxruntime").detect(photos(run), augment=True)


@pytest.mark.parametrize(("engine", "activation_type"), [("onnxruntime", "uint8"), ("openvino", "int8")])
def test_an_int8_file_is_made_for_the_engine_it_targets(run, tmp_path, engine, activation_type):
    """--backend openvino: symmetric int8 activations (OpenVINO folds them into its int8 convolutions;
    a zero point on uint8 ones runs as separate fp32 ops); onnxruntime: uint8 with a zero point."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "det-int8.onnx"
    assert main(["detect", "export", "--checkpoint", str(run["ckpt"]), "--output", str(out), "--int8",
                 "--calibration-data", str(run["coco"]), "--calibration-images", "3", "--backend", engine]) == 0  # fmt: skip
    graph = onnx.load(str(out)).graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    # In a QDQ file the weights are stored quantised: every QuantizeLinear quantises an activation.
    zero_points = [values[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[2] in values]
    assert zero_points
    assert {z.dtype.name for z in zero_points} == {activation_type}
    if engine == "openvino":
        assert all(int(abs(z).max()) == 0 for z in zero_points)


def test_val_with_int8_on_the_fly_shows_the_map_it_costs(run, tmp_path, capsys):
    result = _val(["--checkpoint", str(run["ckpt"]), "--data", str(run["coco"]), "--backend", "openvino",
                   "--precision", "int8", "--calibration-data", str(run["images"])], tmp_path)  # fmt: skip
    cost = result["precision_cost"]
    assert result["precision"] == "int8" and abs(cost["fp32_map50"] - result["map50"] - cost["map50_lost"]) < 1e-6
    assert "int8 costs" in capsys.readouterr().out


def test_bf16_export_is_checked_on_openvino_and_runs_fp32_elsewhere(run, tmp_path, capsys):
    from cspnet.inference import load_model

    out = tmp_path / "det-bf16.onnx"
    assert main(["detect", "export", "--checkpoint", str(run["ckpt"]), "--output", str(out), "--precision", "bf16",
                 "--backend", "openvino"]) == 0  # fmt: skip
    assert "runs on openvino bf16" in capsys.readouterr().out
    assert load_model(out, "openvino").precision == "bf16"
    assert load_model(out, "onnxruntime").precision == "fp32"
    assert load_model(out, "openvino", precision="fp32").precision == "fp32"
    assert main(["detect", "export", "--checkpoint", str(run["ckpt"]), "--output", str(out), "--precision",
                 "bf16"]) == 2  # fmt: skip
    assert "--precision bf16 is for OpenVINO" in capsys.readouterr().err


# -- the README's three lines ------------------------------------------------------------------------------------
def readme_python(marker: str) -> str:
    """The README's Python block that contains ``marker``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    return next(b for b in blocks if marker in b)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_readmes_three_lines_run_on_every_engine(run, tmp_path, engine, capsys):
    from cspnet.inference import load_model

    code = readme_python('load_model("det-int8.onnx"')
    int8 = tmp_path / "det-int8.onnx"
    assert main(["detect", "export", "--checkpoint", str(run["ckpt"]), "--output", str(int8), "--int8",
                 "--calibration-data", str(run["images"]), "--calibration-images", "3"]) == 0  # fmt: skip
    source = run["ckpt"] if engine == "torch" else int8  # torch runs the checkpoint (ONNX is for the engines)
    code = (code.replace('"det-int8.onnx"', repr(str(source))).replace('"openvino"', repr(engine))
            .replace('"photo.jpg"', repr(str(run["images"] / "0.png"))).replace('"street.png"', repr(str(run["images"] / "1.png"))))  # fmt: skip
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert str(run["images"] / "0.png") in printed and str(run["images"] / "1.png") in printed
    assert load_model(source, engine).detect(run["images"] / "0.png")[0].source is not None


# -- 6. cspnet benchmark and cspnet export take detectors -----------------------------------------------------
def test_benchmark_measures_a_detector_alone_and_end_to_end_per_stage(run, tmp_path, capsys):
    from cspnet.inference.benchmark import BenchSpec, measure

    for engine in ("torch", "onnxruntime"):
        result = measure(BenchSpec("cspdensenet_bc40_efm", batch_size=2, img_size=64, backend=engine, min_steps=2,
                                   min_seconds=0, warmup=1, images=str(run["images"])))  # fmt: skip
        assert result["img_per_s"] > 0 and result["e2e_img_per_s"] > 0 and result["e2e_images"] == str(run["images"])
        assert set(result["stage_ms"]) == {"decode", "letterbox", "model", "postprocess"}
        assert all(v > 0 for v in result["stage_ms"].values())
    out = tmp_path / "table.md"
    assert main(["benchmark", "cspdensenet_bc40_efm", "--img-size", "64", "--batch-size", "1", "--seconds", "0",
                 "--mode", "both", "--output", str(out)]) == 0  # fmt: skip
    header, _, row = out.read_text().splitlines()[:3]
    assert "e2e img/s" in header and "decode, letterbox, model, NMS" in header and row.count("|") == header.count("|")
    assert "detectors: optimized inference through load_model only" in capsys.readouterr().err  # train mode skipped


# -- bad input, in general: one line, never a traceback ----------------------------------------------------------
DETECTOR_FIELDS = ("strides", "anchors", "pad_value", "thresholds", "category_ids", "output", "resize", "task",
                   "img_size", "class_names")  # fmt: skip


def _detector_metadata() -> dict[str, str]:
    import cspnet
    from cspnet.detection.export import detector_info

    model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3)
    return detector_info(model, 64, ["a", "b", "c"], category_ids=[1, 5, 9]).to_metadata()


def test_a_corrupted_detector_field_is_a_one_line_error_or_a_valid_contract():
    """Every detector field, given values a corrupted or hand-edited file holds (hypothesis draws them)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cspnet.metadata import ModelInfo

    metadata = _detector_metadata()
    values = st.sampled_from(["", "[]", "{}", "null", "nan", "-1", "0", "300", "[0, 8]", "[[1, 2]]", "[[1, 2], [3]]",
                              '[[1, "a"]]', "[[0, 1]]", '{"conf_threshold": 0.1}', "[1, 1, 2]", "[1, 2]",
                              "[-1, 2, 3]", "detections", "logits", "letterbox", "classification", "63", "[true]",
                              "1e999", "[" * 500]) | st.text(max_size=30)  # fmt: skip

    @settings(max_examples=300, deadline=None)
    @given(field=st.sampled_from(DETECTOR_FIELDS), value=values | st.none())
    def check(field: str, value: str | None) -> None:
        edited = {**metadata, field: value}
        if value is None:
            del edited[field]
        try:
            info = ModelInfo.from_metadata(edited, source="d.onnx")
        except ValueError as exc:
            assert str(exc).startswith("d.onnx has ") and "\n" not in str(exc) and len(str(exc)) < 500, exc
            return
        if info.task == "detection":  # accepted: every field usable as it is
            assert 0 <= info.pad_value <= 255 and info.thresholds is not None and info.resize == "letterbox"
            assert info.strides is None or info.img_size % max(info.strides) == 0
            assert info.category_ids is None or len(set(info.category_ids)) == len(info.class_names)

    check()


BAD_COMMANDS = {
    "classes unknown": (["detect", "predict", "{image}", "--checkpoint", "{ckpt}", "--classes", "purple"],
                        "--classes 'purple' is neither a class name"),
    "names missing": (["detect", "val", "--model", "csppeleenet_fpn", "--checkpoint", "{weights}", "--names",
                       "{tmp}/none.names"], "not 'coco' and not a file of class names"),
    "names with a checkpoint": (["detect", "val", "--checkpoint", "{ckpt}", "--names", "coco"],
                                "--names is for --model with a weights file"),
    "weights without model": (["detect", "predict", "{image}", "--checkpoint", "{weights}"], "name its detector"),
    "model not a detector": (["detect", "val", "--model", "cspdarknet53", "--checkpoint", "{weights}"],
                             "is not a detector"),
    "int8 without data": (["detect", "val", "--checkpoint", "{ckpt}", "--backend", "onnxruntime", "--precision",
                           "int8"], "needs --calibration-data"),
    "img-size of a file": (["detect", "predict", "{image}", "--checkpoint", "{onnx}", "--backend", "onnxruntime",
                            "--img-size", "128"], "takes 64x64 images"),
    "img-size off stride": (["detect", "predict", "{image}", "--checkpoint", "{ckpt}", "--img-size", "70"],
                            "a multiple of its stride"),
    "onnx on torch": (["detect", "predict", "{image}", "--checkpoint", "{onnx}"], "run it with backend"),
    "nms file for val": (["detect", "val", "--checkpoint", "{nms}", "--backend", "onnxruntime", "--data", "{coco}"],
                         "export it without NMS"),
    "data of other categories": (["detect", "predict", "{image}", "--checkpoint", "{ckpt}", "--data", "{other}"],
                                 "are not the model's classes"),
    "calibration data missing": (["detect", "export", "--checkpoint", "{ckpt}", "--output", "{tmp}/x.onnx", "--int8",
                                  "--calibration-data", "{tmp}/nowhere"], "--calibration-data not found"),
    "classifier file": (["detect", "predict", "{image}", "--checkpoint", "{classifier}", "--backend", "onnxruntime"],
                        "holds a classification model"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_input_to_the_detector_commands_is_one_line(run, tmp_path, capsys, case):
    argv, message = BAD_COMMANDS[case]
    weights = tmp_path / "w.weights"
    weights.write_bytes(b"\0" * 64)
    other = json.loads(run["coco"].read_text())
    other["categories"] = [{"id": c["id"], "name": c["name"] + "x"} for c in other["categories"]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    classifier = tmp_path / "classifier.onnx"
    if case == "classifier file":
        import cspnet
        from cspnet.export import export_model

        export_model(cspnet.create_model("cspdensenet_bc40", num_classes=3), "onnx", classifier, 32)
    names = {"image": run["images"] / "0.png", "ckpt": run["ckpt"], "onnx": run["onnx"], "nms": run["nms"],
             "coco": run["coco"], "weights": weights, "tmp": tmp_path, "other": tmp_path / "other.json",
             "classifier": classifier}  # fmt: skip
    filled = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]
    assert main([*filled, *([] if "--output" in filled else ["--output", str(tmp_path / "out")])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert "internal error" not in err
