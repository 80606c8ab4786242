"""Fitting a model from a cohort: the training pipeline (`train`) and the spline-logistic comparator
(`baseline`)."""
