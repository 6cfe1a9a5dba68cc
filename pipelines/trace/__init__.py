"""The trace logic without I/O: the teacher prompt and the parse of its reply into thought and answer."""
