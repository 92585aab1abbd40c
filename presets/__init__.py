"""Model and GPU SKU catalogs as data, their loader, and the tuning memory estimator."""
