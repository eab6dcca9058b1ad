"""The errors a user can fix, which every entry point reports in one line (``tfrnn.cli``)."""


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file, NaN loss).

    Library code raises it with a message that names the input at fault; an entry point lets
    it propagate to :func:`tfrnn.cli.run`, which prints ``error: <message>`` on one line and
    exits with status 2, instead of a traceback from deep inside TensorFlow.
    """
