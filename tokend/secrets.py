"""Secret sources (file, env, systemd credential, literal) and a Secret type whose repr is redacted.

A secret is the bytes the OS hands over (SPEC §8.3): file contents and environment variables are
read as bytes and decoded as strict UTF-8 whatever the locale, so a value that is not UTF-8 is a
:class:`ConfigError` naming the key, never a ``str`` with surrogates that fails later.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokend.errors import ConfigError

SourceKind = Literal["file", "env", "credential", "literal"]

# Where Docker and Compose mount a service's secrets.
DOCKER_SECRETS_DIR = "/run/secrets/"

# A password or API key is a few hundred bytes at most; a bigger file is the wrong file.
MAX_SECRET_BYTES = 64 * 1024

# Values of `*_env` sources, kept after the variable is removed from the environment (SPEC §5.6)
# so that the re-read before every login still finds them.
_ENV_CACHE: dict[str, str] = {}


class Secret:
    """A secret value. ``str`` and ``repr`` never show it; :meth:`reveal` does, on purpose."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    @property
    def digest(self) -> str:
        """A stable identity for the value (sha256), so rejections can be counted per secret."""
        # surrogatepass: total for any str; read_secret never returns one that needs it.
        return hashlib.sha256(self._value.encode("utf-8", "surrogatepass")).hexdigest()

    def __repr__(self) -> str:
        return "Secret('**redacted**')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from. ``key`` is the config key path, for error messages."""

    kind: SourceKind
    ref: str  # file path, env var name, credential name; for a literal, not the value
    key: str
    literal: Secret | None = None

    def describe(self) -> str:
        """Where the secret is read from, for people; never the value."""
        if self.kind == "file":
            return f"file {self.ref}"
        if self.kind == "env":
            return f"environment variable ${self.ref}"
        if self.kind == "credential":
            return f"systemd credential {self.ref} ($CREDENTIALS_DIRECTORY/{self.ref})"
        return "literal in the config file"


def read_secret(src: SecretSource) -> Secret:
    """Read the secret ``src`` names, now (SPEC §3, §8.3).

    Whatever bytes the source holds, the only exception raised is a ConfigError naming ``src.key``:
    missing, unreadable, empty, not UTF-8, or holding a line break or a NUL.
    """
    if src.kind == "file":
        value = _read_file(Path(src.ref), src.key)
    elif src.kind == "env":
        value = _read_env(src.ref, src.key)
    elif src.kind == "credential":
        value = _read_file(_credential_path(src), src.key)
    else:
        if src.literal is None:
            raise ConfigError(src.key, "literal secret source without a value", "set the value")
        value = src.literal.reveal()
    check_secret_value(value, src.key)
    return Secret(value)


def secret_stamp(src: SecretSource) -> tuple[object, ...] | None:
    """A cheap stamp that changes when the secret may have changed; ``None`` if it is unreadable.

    For files and credentials, the file's mtime, size and inode (a replaced or rewritten file gives
    a new stamp); for environment variables and literals, a constant: they only change on reload.
    """
    if src.kind == "file":
        path = Path(src.ref)
    elif src.kind == "credential":
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return None
        path = Path(directory) / src.ref
    else:
        return (src.kind, src.ref)
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def check_secret_value(value: str, key: str) -> None:
    """Refuse a secret that is empty, not UTF-8, or holds a line break or a NUL (ConfigError).

    Any of these would be sent as is and rejected, and each rejected login counts towards the
    identity store's account lockout, so a value that cannot be right is refused here instead.
    """
    if value == "":
        raise ConfigError(key, "the secret is empty", "put the password or API key in it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: undecodable bytes under surrogateescape
        raise ConfigError(key, "the secret is not valid UTF-8",
                          "store the password or API key as UTF-8 text") from None
    if "\n" in value or "\r" in value:
        raise ConfigError(
            key,
            "the secret contains a line break (only one trailing newline is stripped)",
            "store the secret alone on a single line",
        )
    if "\0" in value:
        raise ConfigError(key, "the secret contains a NUL character",
                          "store only the password or API key")


def clear_env_cache() -> None:
    """Forget the values read from environment variables (for tests)."""
    _ENV_CACHE.clear()


def _read_env(name: str, key: str) -> str:
    # Read as bytes: os.environ decodes with surrogateescape (under the C locale too), which would
    # turn a byte that is not UTF-8 into a str that cannot be sent.
    raw = os.environb.get(os.fsencode(name))
    if raw is not None:
        # Removing it keeps the secret out of child processes and /proc/<pid>/environ. Both views
        # share one store today; popping from each keeps that true if they ever stop sharing it.
        os.environb.pop(os.fsencode(name), None)
        os.environ.pop(name, None)
        _ENV_CACHE.pop(name, None)  # a new value, even a bad one, replaces the remembered one
        if raw == b"":
            raise ConfigError(key, f"environment variable ${name} is empty", f"set {name}")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                key, f"environment variable ${name} is not valid UTF-8",
                f"set {name} to the secret encoded as UTF-8, which tokend expects whatever LANG"
                " or LC_ALL say, or use a *_file source",
            ) from None
        _ENV_CACHE[name] = value
        return value
    if name in _ENV_CACHE:
        return _ENV_CACHE[name]
    raise ConfigError(
        key,
        f"environment variable ${name} is not set",
        f"export {name} in tokend's environment (e.g. EnvironmentFile= in the unit)",
    )


def _credential_path(src: SecretSource) -> Path:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            src.key,
            "$CREDENTIALS_DIRECTORY is not set, so there is no systemd credential to read",
            f"add LoadCredential={src.ref}:/path/to/secret to the [Service] section of the unit, "
            "or use a *_file source",
        )
    if "/" in src.ref or src.ref in ("", ".", ".."):
        raise ConfigError(src.key, f"{src.ref!r} is not a credential name", "use a plain file name")
    return Path(directory) / src.ref


def _read_file(path: Path, key: str) -> str:
    """The file's text minus one trailing newline; errors name the path, never the contents."""
    try:
        # O_NONBLOCK: a FIFO put in place of the file must not hang start-up.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            key, f"cannot read secret file {path}: {_reason(exc)}",
            "create it, make it readable by tokend's user, or fix the path",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(key, f"secret file {path} is not a regular file", "point it at a file")
        if st.st_mode & 0o007:
            where, fix = loose_secret_fix(path, st)
            raise ConfigError(
                key,
                f"secret file {path} is accessible to other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}){where}",
                fix,
            )
        data = _read_fd(fd, path, key)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(
            key, f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes",
            "point it at the file that holds only the password or API key",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            key, f"secret file {path} is not UTF-8 text",
            "store the password or API key as UTF-8 text",
        ) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if text == "":
        raise ConfigError(key, f"secret file {path} is empty", "put the password or API key in it")
    return text


def loose_secret_fix(path: Path, st: os.stat_result, *,
                     group_may_read: bool = True) -> tuple[str, str]:
    """Where a secret file readable by others comes from, and the fix that works there.

    A ``chmod`` cannot fix a file on a Kubernetes Secret volume (read-only, behind ``..data``
    symlinks, 0644 by default) nor a Docker secret (read-only, root's, 0444 by default): their mode
    is set where they are declared. Returns ``(" on a ...", fix)``; the first part may be empty.
    ``group_may_read``: whether the file may be readable by its group (a password may, a session
    key may not).
    """
    if _on_kubernetes_volume(path) and not group_may_read:
        return (", on a Kubernetes Secret volume, which is read-only",
                "a Secret volume with fsGroup is always group-readable: copy the file at start"
                " into a memory emptyDir with install -m 0600, in an init container (as"
                " deploy/kubernetes/tokend-facade.yaml does)")
    if _on_kubernetes_volume(path):
        return (", on a Kubernetes Secret volume, which is read-only",
                "set defaultMode: 0440 on the Secret volume (or mode: 0440 on its item) and"
                " the pod's securityContext.fsGroup to a group of tokend's, so only the owner and"
                " that group can read it")
    if str(path).startswith(DOCKER_SECRETS_DIR):
        return (", a Docker secret, which is read-only",
                "declare it with the secret's uid and mode, e.g. in compose: secrets: - source:"
                f" NAME, target: {path.name}, uid: \"{os.geteuid()}\", mode: 0400 (tokend's uid"
                f" is {os.geteuid()}); or docker service create --secret"
                f" source=NAME,target={path.name},uid={os.geteuid()},mode=0400")
    fix = f"chmod 600 {path}" + (" (or 640, owned by a group of tokend's)" if group_may_read
                                 else "")
    if st.st_uid != os.geteuid():
        fix += f", as its owner (uid {st.st_uid}) or root"
    if _read_only(path):
        fix = (f"the file system is read-only: set the mode where {path} is made (0600"
               + (", or 0640 with a group of tokend's)" if group_may_read else ")"))
    return "", fix


def _on_kubernetes_volume(path: Path) -> bool:
    """Whether ``path`` is a file of a Kubernetes Secret or ConfigMap volume (the kubelet's
    atomic writer puts each file behind ``..data/``)."""
    try:
        if os.path.islink(path) and os.readlink(path).startswith("..data/"):
            return True
        return os.path.islink(path.parent / "..data")
    except OSError:
        return False


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _read_fd(fd: int, path: Path, key: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_SECRET_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(
            key, f"cannot read secret file {path}: {_reason(exc)}", "check the file"
        ) from None
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
