import os
import sys
from pathlib import Path

import torch

# Tests import helpers (peer_fixtures) from this folder; keep CPU work predictable on small machines.
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
