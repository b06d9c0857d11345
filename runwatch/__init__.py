"""runwatch: notices when Datature Vi training runs change state and tells people."""

__version__ = "0.1.0"
