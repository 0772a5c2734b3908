"""Text to training batches: corpora (builtin and local files, the held-out split), the tokenized
corpus with its fingerprints, and batches as a pure function of (seed, step, rank) with global positions.
"""
