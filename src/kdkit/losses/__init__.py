"""Loss functions: pure tensor functions, one family per file. Term wrappers live in :mod:`kdkit.terms`."""
