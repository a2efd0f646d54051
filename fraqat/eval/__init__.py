"""Evaluation: the classifier feature network, FID through clean-fid, real pipelines' images."""
