"""Framework integrations, one module each; each imports its framework only when imported.

- ``watchdog.integrations.pytorch``: an optimizer step hook (plain PyTorch loops).
- ``watchdog.integrations.lightning``: ``WatchdogCallback`` for Lightning's Trainer.
- ``watchdog.integrations.huggingface``: ``WatchdogTrainerCallback`` for transformers' Trainer.

docs/integrations.md shows each with resume and torchrun restarts.
"""
