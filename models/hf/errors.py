"""The one error type of Hugging Face import/export: a message naming the file, field or tensor."""


class HFFormatError(ValueError):
    """A Hugging Face directory (or one of our models) that cannot be translated, and why."""
