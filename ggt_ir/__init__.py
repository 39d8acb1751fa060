"""ggt-ir."""
