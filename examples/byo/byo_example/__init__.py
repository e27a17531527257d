"""A complete "bring your own" fedcore project: a residual MLP, a CSV loader, a strategy."""
