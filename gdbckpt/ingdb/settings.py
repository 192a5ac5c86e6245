"""`set ckpt ...` / `show ckpt ...`, and a way to change GDB settings for a while."""

from __future__ import annotations

import contextlib

import gdb


class _Prefix(gdb.Command):
    def __init__(self, cmd: str, doc: str):
        self.__doc__ = doc
        self.cmd = cmd
        super().__init__(cmd, gdb.COMMAND_SUPPORT, gdb.COMPLETE_NONE, True)

    def invoke(self, arg, from_tty):
        if arg.strip():
            raise gdb.GdbError(f'Undefined {self.cmd} command: "{arg.strip()}".  '
                               f'Try "help {self.cmd}".')
        if self.cmd.startswith("show"):
            for name in _settings:          # what GDB's own `show PREFIX` does
                gdb.execute(f"show ckpt {name}", from_tty)
        else:
            gdb.execute(f"help {self.cmd}", from_tty)


class BoolSetting(gdb.Parameter):
    def __init__(self, name: str, default: bool, doc: str, set_doc: str):
        self.__doc__ = doc
        self.set_doc = set_doc
        self.show_doc = f"Show {set_doc[4:]}" if set_doc.startswith("Set ") else set_doc
        super().__init__(f"ckpt {name}", gdb.COMMAND_SUPPORT, gdb.PARAM_BOOLEAN)
        self.value = default

    def get_set_string(self) -> str:
        return ""

    def get_show_string(self, svalue: str) -> str:
        return f"{self.set_doc[4:].rstrip('.')} is {svalue}."


class EnumSetting(gdb.Parameter):
    def __init__(self, name: str, values: tuple[str, ...], doc: str, set_doc: str):
        self.__doc__ = doc
        self.set_doc = set_doc
        self.show_doc = f"Show {set_doc[4:]}"
        super().__init__(f"ckpt {name}", gdb.COMMAND_SUPPORT, gdb.PARAM_ENUM, list(values))
        self.value = values[0]

    def get_set_string(self) -> str:
        return ""

    def get_show_string(self, svalue: str) -> str:
        return f"{self.set_doc[4:].rstrip('.')} is {svalue}."


_settings: dict[str, gdb.Parameter] = {}


def register() -> None:
    if _settings:
        return
    _Prefix("set ckpt", "Settings of gdbckpt (checkpoint and restore).")
    _Prefix("show ckpt", "Settings of gdbckpt (checkpoint and restore).")
    for name, default, set_doc, doc in (
        ("debug", False, "Set whether gdbckpt errors show a Python traceback.",
         "When on, an unexpected error in a ckpt command shows its traceback."),
        ("sync", False, "Set whether ckpt save flushes the image to disk before renaming it.",
         "When on, ckpt save calls fsync on the image and its directory (about 1.5 s per GiB\n"
         "on these disks), so a crash right after the save cannot lose it."),
        ("verify", True, "Set whether ckpt restore checks every chunk's checksum first.",
         "When on (the default), ckpt restore reads the whole image and checks every\n"
         "checksum before it changes anything; off skips the memory checksums."),
        ("progress", False, "Set whether ckpt save and restore report their progress.",
         "When on, ckpt save and restore print lines '[ckpt-progress] PHASE DONE TOTAL'\n"
         "as they go; gdbckpt-batch turns them into a progress bar."),
    ):
        _settings[name] = BoolSetting(name, default, doc, set_doc)
    _settings["fill-method"] = EnumSetting(
        "fill-method", ("stub", "procmem"),
        "How ckpt restore copies memory from the image: 'stub' (the default: the restart\n"
        "stub reads it from the image itself) or 'procmem' (GDB's side writes it through\n"
        "/proc/PID/mem). benchmarks/bench.py measures both; stub is the faster here.",
        "Set how ckpt restore copies memory from the image.")


def get(name: str) -> bool:
    register()
    return bool(_settings[name].value)


def value(name: str) -> str:
    register()
    return str(_settings[name].value)


class Progress:
    """Reports '[ckpt-progress] PHASE DONE TOTAL' lines when 'set ckpt progress' is on."""

    def __init__(self, phase: str, total: int):
        self.phase, self.total = phase, total
        self.on = get("progress")
        self.last = 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        import time
        now = time.monotonic()
        if self.on and (final or now - self.last > 0.1):
            self.last = now
            gdb.write(f"[ckpt-progress] {self.phase} {done} {self.total}\n")
            gdb.flush()


@contextlib.contextmanager
def temporarily(**values: str):
    """Set GDB settings (`set NAME VALUE`) and put the user's values back afterwards.

    Names use underscores for spaces and dashes: scheduler_locking -> 'scheduler-locking'.
    """
    saved = {}
    for key, value in values.items():
        name = key.replace("__", " ").replace("_", "-")
        old = gdb.parameter(name)
        saved[name] = _as_setting(old)
        gdb.execute(f"set {name} {value}", to_string=True)
    try:
        yield
    finally:
        for name, old in saved.items():
            try:
                gdb.execute(f"set {name} {old}", to_string=True)
            except gdb.error:
                pass


def _as_setting(value) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value is None:
        return "auto"
    return str(value)


def signal_handling(sig: str) -> str:
    """The user's `handle` setting for sig, as words for `handle`: 'stop print pass'
    (GDB's default, also for a signal GDB has no name for)."""
    try:
        out = gdb.execute(f"info signals {sig}", to_string=True)
    except gdb.error:
        return "stop print pass"
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == sig and len(parts) >= 4:
            words = [("" if parts[i] == "Yes" else "no") + w
                     for i, w in ((1, "stop"), (2, "print"), (3, "pass"))]
            return " ".join(words)
    return "stop print pass"


def signal_passes(signo: int) -> bool:
    """Whether GDB passes signal signo on to the program when it resumes."""
    import signal as pysignal
    # GDB calls the real-time signals SIG32..SIG64 (Python: SIGRTMIN, SIGRTMAX).
    name = f"SIG{signo}" if signo >= 32 else pysignal.Signals(signo).name
    return "nopass" not in signal_handling(name)


def signal_quietly_once(sig: str) -> None:
    """Let sig go unnoticed and undelivered until the current inferior next stops or
    exits (the events of other inferiors, as a tree's, do not count)."""
    user = signal_handling(sig)
    mine = gdb.selected_inferior().num
    gdb.execute(f"handle {sig} nostop noprint nopass", to_string=True)

    def put_back(event):
        inferior = getattr(event, "inferior", None) or gdb.selected_inferior()
        if inferior.num != mine:
            return
        gdb.events.stop.disconnect(put_back)
        gdb.events.exited.disconnect(put_back)
        gdb.execute(f"handle {sig} {user}", to_string=True)

    gdb.events.stop.connect(put_back)
    gdb.events.exited.connect(put_back)
