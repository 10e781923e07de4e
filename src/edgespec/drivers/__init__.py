"""Drivers of the round core that need no network: the virtual-clock driver and the backends it
runs (the real models at their measured cost, or recorded traces at a profile's cost), and the
in-process engine built on them."""
