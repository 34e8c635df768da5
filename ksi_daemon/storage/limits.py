"""The integers SQLite can store: signed 64-bit.

A schema field whose value reaches SQLite (an offset, a limit, a version, a count in a settings
file) is bounded by these, so a larger number is refused by validation (`validation_error`, the
field named) instead of failing inside the handler with sqlite3's OverflowError
(`handler_error`). JSON itself allows any integer, and orjson decodes up to 2**64 - 1.
"""
SQLITE_INT_MAX = 2**63 - 1
SQLITE_INT_MIN = -2**63
