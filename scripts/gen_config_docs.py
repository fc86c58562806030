"""Regenerate deploy/config.example.toml and the reference in docs/configuration.md."""

import argparse
from pathlib import Path

from watchdog.config_docs import render_example, splice_reference

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    """Write both files from the settings' definitions (tests fail until they match)."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    (REPO / "deploy" / "config.example.toml").write_text(render_example())
    docs = REPO / "docs" / "configuration.md"
    docs.write_text(splice_reference(docs.read_text()))
    print("wrote deploy/config.example.toml and docs/configuration.md")


if __name__ == "__main__":
    main()
