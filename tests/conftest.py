import torch

# Tiny test models gain nothing from threads, and on a busy 2-core machine OpenMP spinning makes
# each forward several times slower.
torch.set_num_threads(1)
