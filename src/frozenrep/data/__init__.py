"""Datasets: readers for the real on-disk formats, and generators that write those formats."""
