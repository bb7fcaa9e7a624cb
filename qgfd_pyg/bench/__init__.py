"""``python -m qgfd_pyg.bench TASK``: QGFD against GAT, APPNP and GCN on one protocol."""
