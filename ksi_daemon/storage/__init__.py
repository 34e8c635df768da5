"""SQLite plumbing shared by the plugins that persist data (state, conversation)."""
