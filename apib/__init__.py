"""APIB channel pruning: calibration, per-layer HSIC Lasso under one global penalty, model surgery."""
