"""The networks and what trains them: the Llama-style transformer, Hugging Face import/export, the KD
losses, the LR and α schedules, and the one restricted way checkpoints are loaded.
"""
