"""Typed errors.  Each maps to one HTTP status and OpenAI error type in the server's one
error-mapping place; the CLI prints them as a one-line message."""


class SmallMindError(Exception):
    """Base of every error SmallMind raises on purpose."""


class ModelFormatError(SmallMindError):
    """A model file is not a GGUF we can read: broken, hostile or unsupported."""


class KernelError(SmallMindError):
    """A native kernel refused its arguments (unsupported type, bad shape)."""


class IsaError(SmallMindError):
    """A requested instruction set is unknown or not available on this CPU."""


class ConfigError(SmallMindError):
    """A setting has a bad value."""


class RequestValidationError(SmallMindError):
    """A request's body or parameters are invalid; ``param`` names the offending request
    field (OpenAI's error.param), None when it is the body as a whole."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RegistryError(SmallMindError):
    """A model-registry operation failed: bad id, duplicate, download, hash or manifest."""


class ModelNotFoundError(RegistryError):
    """No model is registered under the requested id."""
