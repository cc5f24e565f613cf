"""Metrics, computed from predictions with the field's reference implementations."""
