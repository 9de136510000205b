"""Print (or write) the table of every configuration key in docs/configuration.md.

python scripts/config_table.py            # print the markdown
python scripts/config_table.py --write    # replace the block between the markers in docs/configuration.md
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"
#: The page that holds the table between START and END.
PAGE = os.path.join(ROOT, "docs", "configuration.md")


def _fmt(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def table() -> str:
    import usb_cfsg  # noqa: F401
    from usb_cfsg.algorithms import get_algorithm_class
    from usb_cfsg.config import algorithm_specs, base_specs

    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    base = base_specs()
    for spec in base.values():
        kind = "one of " + ", ".join(spec.choices) if spec.choices else spec.kind
        lines.append(f"| `{spec.name}` | {kind} | `{_fmt(spec.default)}` | {spec.help} |")
    lines += [
        "",
        "Keys of `algorithm: cfsg_clip` (from `CFSGCLIP.get_argument()`; shared names have the same meaning):",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for spec in algorithm_specs(get_algorithm_class("cfsg_clip")).values():
        kind = "one of " + ", ".join(spec.choices) if spec.choices else spec.kind
        lines.append(f"| `{spec.name}` | {kind} | `{_fmt(spec.default)}` | {spec.help} |")
    lines += [
        "",
        "USB's algorithms bring their own keys (e.g. fixmatch: `T`, `p_cutoff`, `hard_label`); "
        "`python train.py --algorithm NAME --help` lists them.",
    ]
    return "\n".join(lines)


def page_block(text: str) -> str:
    """The markdown between the table's markers in ``text``."""
    return text[text.index(START) + len(START) : text.index(END)].strip("\n")


def main() -> int:
    body = table()
    if "--write" in sys.argv:
        with open(PAGE, encoding="utf-8") as fh:
            text = fh.read()
        text = text[: text.index(START) + len(START)] + "\n" + body + "\n" + text[text.index(END) :]
        with open(PAGE, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
