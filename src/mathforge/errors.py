"""The one exception type that means "the user gave bad input": printed as one line, exit code 2."""


class UserError(Exception):
    """A problem with the user's input (file, config, option, data) and how to fix it, in one line."""
