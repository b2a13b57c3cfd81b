import os
import sys
from pathlib import Path

# Spinning OpenMP threads starve each other when other processes share the cores (a busy CI runner,
# the DDP tests' workers): a small forward pass then runs 100x slower. Passive waiting avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# Tests import helpers (peer_fixtures) from this folder; keep CPU work predictable on small machines.
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
