import sys
from pathlib import Path

# Test helpers (tiny model builders, oracles) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

import torch

# Tiny test models gain nothing from threads, and on a busy 2-core machine OpenMP spinning makes
# each forward several times slower.
torch.set_num_threads(1)
