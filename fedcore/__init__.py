"""fedcore: the shared core of the federated-learning platform (engine, nn, optim, models).

Subpackages are imported on demand so light users (e.g. secure aggregation) stay light.
"""

__version__ = "0.1.0"
