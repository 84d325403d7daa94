"""actors layer of prefloop."""
