//! Platforms (`os/arch[/variant]`): parsing, normalising, the host default.
