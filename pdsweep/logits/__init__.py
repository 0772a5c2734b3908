"""The teacher's logits: truncation (top-p-k, sampling, targets at read time), the shard codec, the
store (writer, reader, sealed manifest) and the teacher pass that fills it.
"""
