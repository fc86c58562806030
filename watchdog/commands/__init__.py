"""One module per ``gpu-watchdog`` subcommand; each defines ``register(subparsers)``."""
