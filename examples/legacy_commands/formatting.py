"""Helpers the handlers shared: no command in here, so the generator skips it and says so."""


def as_line(text: str) -> str:
    return text.replace("\n", " ")
