"""The one error type data loading raises: its message is a complete one-line instruction."""


class DatasetError(ValueError):
    """A dataset is missing, corrupt or fails its checksum; the message says what to do."""
