"""core layer of prefloop."""
