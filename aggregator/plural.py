"""Counts in messages: '1 lecture', '2 lectures'."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """Return the number with the noun, in the plural unless the number is 1 (nouns with a plain 's' plural)."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
