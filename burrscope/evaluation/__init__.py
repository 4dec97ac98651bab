"""Scoring the pooled out-of-fold predictions: the cross-validated metrics, the tables behind the plots, intervals."""
