"""Demo command line, web app and their shared inference and drawing code."""
