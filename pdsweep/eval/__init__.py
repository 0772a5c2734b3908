"""Evaluation: held-out loss / perplexity / bits per byte and teacher agreement (heldout.py), the
paper's benchmarks offline (tasks.py, one registry), scored the way lm-evaluation-harness scores
them (scoring.py), and the bridge to the harness itself (harness.py).
"""
