"""Where the ClientApps of a simulation run: in this process, or on Flower's runtime (Ray)."""

BACKENDS = ("inprocess", "flower")
