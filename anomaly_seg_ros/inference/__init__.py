"""Inference helpers: pre/post-processing shared by training, evaluation, the bag tool and the node."""
