"""Importing and using the library changes nothing process-wide: no environment variables, no
matplotlib backend, no pyplot. (The ``cspnet`` command sets its own defaults: see test_runtime.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cspnet


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MPLBACKEND")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_cspnet_leaves_the_environment_and_matplotlib_alone() -> None:
    result = _run(
        """
import json, os, sys
import matplotlib
env, backend = dict(os.environ), matplotlib.rcParams._get("backend")
import cspnet
light = "torch" not in sys.modules  # nothing heavy until a name is used
cspnet.create_model("cspdensenet_bc40", num_classes=3)
same_env = dict(os.environ) == env
cspnet.profile("cspdensenet_bc40")  # (torch's own FlopCounterMode import sets TORCHINDUCTOR_CACHE_DIR)
print(json.dumps({"env": same_env, "backend": matplotlib.rcParams._get("backend") == backend,
                  "light": light, "pyplot": "matplotlib.pyplot" in sys.modules}))
"""
    )
    assert result == {"env": True, "backend": True, "light": True, "pyplot": False}


def test_report_plots_draw_without_pyplot_or_a_backend_switch(tmp_path) -> None:
    result = _run(
        f"""
import json, os, sys
from pathlib import Path
import matplotlib
backend = matplotlib.rcParams._get("backend")
from cspnet.profiling import profile
from cspnet.profiling.reproduce import AblationRow
from cspnet.reports.reproduction import plot_ablation, plot_layers
base, csp = profile("densenet_bc40"), profile("cspdensenet_bc40")
rows = [AblationRow("CSPPeleeNet", "densenet_bc40", 0.0, "baseline", base, 1.0),
        AblationRow("CSPPeleeNet", "cspdensenet_bc40", 0.5, "csp", csp, 0.9)]
out = Path({str(tmp_path)!r})
drawn = plot_ablation(rows, out / "ablation.png")
plot_layers([(base, csp)], out / "layers.png")
print(json.dumps({{"drawn": drawn, "backend": matplotlib.rcParams._get("backend") == backend,
                  "pyplot": "matplotlib.pyplot" in sys.modules, "env": "MPLBACKEND" in os.environ}}))
"""
    )
    assert result == {"drawn": True, "backend": True, "pyplot": False, "env": False}
    for name in ("ablation.png", "layers.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_public_name_resolves() -> None:
    assert sorted(cspnet.__all__) == sorted([*cspnet._EXPORTS, "__version__", "detection", "profiling"])
    for name in cspnet.__all__:
        assert getattr(cspnet, name) is not None
