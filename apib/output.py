"""A command's output folder, written whole or not at all.

    with OutputFolder("runs/r56", overwrite=False, inputs={"--ckpt": "runs/base/model.pt"}) as out:
        torch.save(..., out / "model.pt")
    # runs/r56 now holds the new run; had anything raised, it would hold the previous one untouched.

The files are written into a fresh hidden folder beside the destination, created with the user's
umask, which replaces the destination only when the command has finished. Everything that could make
that fail late is checked when the folder is opened, before any work: the destination is a folder or
absent, its parent is writable, it holds no previous run unless `overwrite` (and then nothing but what
a run writes), and no input file lies inside it.
"""

import os
import secrets
import shutil
import socket
from pathlib import Path

RUN_FILES = frozenset({"model.pt", "pruned.pt", "report.json", "widths.png"})
"""Every file a command writes: the only entries `overwrite` replaces."""


class OutputFolder:
    """The destination folder `path` of one run (see the module docstring). `inputs` maps each input
    option to its path (or None), to refuse a destination that contains one."""

    def __init__(self, path, *, overwrite: bool = False, inputs: dict | None = None):
        self.path = Path(os.path.abspath(path))  # "." and ".." resolved: the folder has a name and a parent
        self.where = f"--output {str(path)!r}"
        self.staging: Path | None = None
        self._check(overwrite, inputs or {})

    def _check(self, overwrite: bool, inputs: dict) -> None:
        where = self.where
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{where} is a file; expected a folder (new or empty) for the results")
        target = self.path.resolve()
        for flag, value in inputs.items():
            if value is not None and target in (Path(value).resolve(), *Path(value).resolve().parents):
                raise ValueError(
                    f"{flag} {str(value)!r} lies inside {where}, which this run replaces as a whole: "
                    "write the results to another folder"
                )
        entries = sorted(os.listdir(self.path)) if self.path.is_dir() else []
        if entries and not overwrite:
            raise ValueError(
                f"{where} already holds {', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}: "
                "pass --overwrite to replace that run, or choose another folder"
            )
        foreign = [e for e in entries if e not in RUN_FILES]
        if foreign:
            raise ValueError(
                f"{where} holds {', '.join(foreign[:4])}, which no apib run writes: refusing to replace "
                "it even with --overwrite"
            )

    def __enter__(self) -> "OutputFolder":
        parent = self.path.parent
        prefix = f".{self.path.name}.apib-partial-{socket.gethostname()}-"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(parent, prefix)
            self.staging = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
            self.staging.mkdir()
        except OSError as err:
            raise ValueError(
                f"{self.where}: cannot create a folder in {str(parent)!r} ({err.strerror or err})"
            ) from err
        return self

    def __truediv__(self, name: str) -> Path:
        """Where to write the result file `name` during the run."""
        return self.staging / name

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            if self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)

    def _commit(self) -> None:
        """Moves the finished run into place. A previous run is renamed aside first and removed last:
        until then, one of the two renames failing leaves it where it was."""
        if not self.path.exists():
            os.rename(self.staging, self.path)
            return
        aside = self.staging.with_name(self.staging.name.replace("-partial-", "-previous-"))
        os.rename(self.path, aside)
        try:
            os.rename(self.staging, self.path)
        except BaseException:
            os.rename(aside, self.path)
            raise
        shutil.rmtree(aside, ignore_errors=True)


def _remove_abandoned(parent: Path, prefix: str) -> None:
    """Removes the staging folders of runs on this host that were killed before they could clean up
    (SIGKILL, power loss): their process no longer exists."""
    for name in os.listdir(parent):
        pid = name[len(prefix) :].split("-")[0]
        if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(parent / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
