"""Real models brought in from files a package index ships (``prefloop model import``), cached like the tiny assets."""
