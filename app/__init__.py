"""app layer of prefloop."""
