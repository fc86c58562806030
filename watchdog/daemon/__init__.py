"""The long-running daemon: state, poll loop, lifecycle."""
