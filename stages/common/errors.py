"""One exception type for problems a user can fix; stages print it without a traceback."""


class PipelineError(Exception):
    """Bad input or configuration: the message says what, where, and what to do."""
