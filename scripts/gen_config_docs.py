"""Regenerate deploy/config.example.toml and the reference in docs/configuration.md."""

from pathlib import Path

from watchdog.config_docs import render_example, splice_reference

REPO = Path(__file__).resolve().parent.parent

(REPO / "deploy" / "config.example.toml").write_text(render_example())
docs = REPO / "docs" / "configuration.md"
docs.write_text(splice_reference(docs.read_text()))
print("wrote deploy/config.example.toml and docs/configuration.md")
