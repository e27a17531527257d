"""Where the ClientApps of a simulation run: in this process, or on Flower's runtime (Ray)."""

RUNTIMES = ("inprocess", "flower")
