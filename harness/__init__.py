"""harness: a plugin host for comparing certified-robustness methods."""
