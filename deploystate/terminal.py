"""Text as a terminal should show it: what a person typed can neither forge a line nor paint
the screen."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on written as its escape.

    Control characters (line breaks, ESC, BEL...), invisible formatting (right-to-left overrides),
    unusual separators and lone surrogates become ``\\n``, ``\\x1b``, ``\\u202e``...: a name or a
    reason can neither forge a row nor paint the terminal.  Used wherever user-given text is
    printed; the journal and ``--json`` keep the text exactly.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
