"""The darknet cfgs the detector benchmark gives OpenCV's DNN module (``cv2.dnn.readNetFromDarknet``).

* ``csresnext50-panet-spp.cfg`` is the published file itself, kept in ``benchmarks/cfg/`` (from
  AlexeyAB/darknet, whose YOLO LICENSE puts it in the public domain; see ``cfg/README.md``).
* ``csdarknet53-panet-spp.cfg`` is published only in WongKinYiu/CrossStagePartialNetworks, which
  carries no license, so it is not copied here. :func:`csdarknet53_panet_spp` writes it: the
  CSPDarknet53 backbone from its structure (below), then the neck and heads of the kept
  csresnext50-panet-spp.cfg, whose layers are the same after the backbone (only the two absolute
  ``[route]`` indices into the backbone differ). ``python benchmarks/darknet_cfgs.py --check FILE``
  compares the written cfg with a copy of the published one, layer by layer (``[net]``, which holds
  training settings, aside): equal for commit 8786894 of that repository.

CSPDarknet53 in darknet's layers: a 3x3 conv of 32, then five stages of widths 64, 128, 256, 512,
1024 with 1, 2, 8, 8, 4 residual blocks. Each stage: a 3x3/2 conv of ``c``; the bypass 1x1 conv
(``c`` in stage 1, ``c/2`` after), ``[route] -2`` and the block path's 1x1 conv (same width); the
blocks (1x1 conv, 3x3 conv, ``[shortcut] -3``; the first stage's 1x1 is ``c/2`` wide); the
transition T (1x1 conv); ``[route] -1,-(3n+4)`` (T, then the bypass); U (1x1 conv of ``c``).
Every conv has batch norm and leaky activation.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HERE = Path(__file__).parent
CFG = HERE / "cfg"
CSRESNEXT50 = CFG / "csresnext50-panet-spp.cfg"

Section = tuple[str, dict[str, str]]


def parse(text: str) -> list[Section]:
    """A cfg's sections in order: ``(name, {key: value})``, comments and spacing dropped."""
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append((line.strip("[]"), {}))
        else:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = re.sub(r"\s+", "", value)
    return sections


def render(sections: list[Section]) -> str:
    return "\n".join(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in keys.items()) for name, keys in sections)


def _conv(filters: int, size: int, stride: int = 1) -> Section:
    return ("convolutional", {"batch_normalize": "1", "filters": str(filters), "size": str(size),
                              "stride": str(stride), "pad": "1", "activation": "leaky"})  # fmt: skip


def csdarknet53_backbone(depths: tuple[int, ...] = (1, 2, 8, 8, 4)) -> tuple[list[Section], list[int]]:
    """CSPDarknet53's layers (module docstring) and the index of each stage's last layer (U)."""
    layers = [_conv(32, 3)]
    outputs = []
    for i, (width, blocks) in enumerate(zip((64, 128, 256, 512, 1024), depths)):
        half = width if i == 0 else width // 2
        layers += [_conv(width, 3, 2), _conv(half, 1), ("route", {"layers": "-2"}), _conv(half, 1)]
        for _ in range(blocks):
            layers += [_conv(width // 2 if i == 0 else half, 1), _conv(half, 3), ("shortcut", {"from": "-3", "activation": "linear"})]
        layers += [_conv(half, 1), ("route", {"layers": f"-1,-{3 * blocks + 4}"}), _conv(width, 1)]
        outputs.append(len(layers) - 1)
    return layers, outputs


def _stage_outputs(layers: list[Section]) -> list[int]:
    """Indices of the 1x1 convs that follow a two-input ``[route]`` (a CSP stage's U), in order."""
    return [i + 1 for i, (name, keys) in enumerate(layers[:-1])
            if name == "route" and "," in keys["layers"] and layers[i + 1][0] == "convolutional"]  # fmt: skip


def csdarknet53_panet_spp(template: str | None = None, side: int = 416) -> str:
    """csdarknet53-panet-spp.cfg: CSPDarknet53, then csresnext50-panet-spp.cfg's neck and heads."""
    sections = parse(template if template is not None else CSRESNEXT50.read_text())
    net, layers = sections[0], sections[1:]
    spp = next(i for i, (name, _) in enumerate(layers) if name == "maxpool" and i > 4)
    neck_start = spp - 3  # the SPP block's three convs come first: 1x1, 3x3, 1x1
    old_outputs = [i for i in _stage_outputs(layers) if i < neck_start]
    backbone, new_outputs = csdarknet53_backbone()
    shift = dict(zip(old_outputs[::-1], new_outputs[::-1]))  # aligned from the deepest stage
    neck: list[Section] = []
    for name, keys in layers[neck_start:]:
        if name == "route":
            refs = [int(r) for r in keys["layers"].split(",")]
            keys = {**keys, "layers": ",".join(str(shift[r] if r >= 0 else r) for r in refs)}
        neck.append((name, keys))
    net_keys = {**net[1], "width": str(side), "height": str(side)}
    return render([("net", net_keys), *backbone, *neck])


def differences(ours: str, published: str) -> list[str]:
    """Layer-by-layer differences between two cfgs (``[net]`` aside); empty when they are the same network."""
    a, b = parse(ours)[1:], parse(published)[1:]
    found = [f"{len(a)} layers against {len(b)}"] if len(a) != len(b) else []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            found.append(f"layer {i}: {x} against {y}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write csdarknet53-panet-spp.cfg here")
    parser.add_argument("--check", type=Path, metavar="FILE", help="a copy of the published csdarknet53-panet-spp.cfg")
    args = parser.parse_args()
    text = csdarknet53_panet_spp()
    if args.write:
        args.write.write_text(text)
    if args.check:
        found = differences(text, args.check.read_text())
        print("\n".join(found) if found else f"same {len(parse(text)) - 1} layers as {args.check}")


if __name__ == "__main__":
    main()
