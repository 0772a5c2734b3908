"""Training: one readable loop (trainer.py) over an engine that owns what differs between plain torch
and DeepSpeed ZeRO-3 (backends.py)."""
