"""The exceptions gdbckpt raises on purpose.

Every message is one line that starts with the command it concerns and says
what to do next. The GDB commands turn a CkptError into gdb.GdbError and the
batch tool into a non-zero exit; anything else is a bug and keeps its
traceback.
"""


class CkptError(Exception):
    """Base class: a failure the user can act on."""


class UsageError(CkptError):
    """Bad arguments to a command."""


class ImageError(CkptError):
    """An image file that is missing, unreadable, corrupt, truncated or foreign."""


class SaveError(CkptError):
    """The process cannot be saved (not running, not permitted, unsupported state)."""


class RestoreError(CkptError):
    """A restore that cannot start or that failed at a step of its plan."""


class NotPermitted(CkptError):
    """The kernel refused an operation that needs a privilege we lack."""
