"""Experiment drivers over DVC experiments: the schedule ablation and the regime map."""
