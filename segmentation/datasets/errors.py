class SegDataError(RuntimeError):
    """A segmentation benchmark's files are missing or empty; the message names the path."""
