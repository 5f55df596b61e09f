"""Print the configuration tables of the README from the settings classes themselves.

    python scripts/settings_table.py            # markdown to stdout
tests/test_readme.py checks that the README holds exactly this output.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decoder_service.settings import DecoderSettings  # noqa: E402
from encoder_service.settings import EncoderSettings  # noqa: E402
from services.serving.server import ServerSettings  # noqa: E402
from services.settings import CodecSettings  # noqa: E402

SECTIONS = (
    ("Codec (CLI, encoder and decoder)", CodecSettings),
    ("Encoder service", EncoderSettings),
    ("Decoder service", DecoderSettings),
    ("Connections and shutdown (both services)", ServerSettings),
)


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if "cache" in str(value):
            return "`~/.cache/textsketch`"
        return f"`{value}`"
    if field.default is None:
        return "unset"
    return f"`{field.default}`"


def table() -> str:
    lines: list[str] = []
    for title, cls in SECTIONS:
        prefix = cls.model_config["env_prefix"]
        lines += [f"**{title}** (`{prefix}*`)", "", "| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            if name == "codec":
                continue
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
