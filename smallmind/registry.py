"""The model registry: GGUF and .smq files in a cache directory, described by ``manifest.json``.

Layout of the cache directory (see :func:`resolve_cache_dir` for where it is)::

    manifest.json        {"version": 1, "models": {id: entry, ...}}
    manifest.lock        flock()ed for every read-modify-write of the manifest
    <id>.gguf, <id>.smq  a model we own (copied, downloaded or assembled), or a symlink to
                         the user's file for ``--link`` (the entry then records the absolute
                         path of that file, and we never delete it); the suffix and the
                         entry's ``format`` follow the file's magic, not the source's name
    <id>.gguf.part       a download / copy in progress (flock()ed while in use).  An
                         interrupted download leaves it (with ``<id>.gguf.part.json``, the
                         URL and validators) so the next ``model add`` of the same id and URL
                         resumes with an HTTP Range request.  A copy that fails, or a
                         download whose content turns out wrong (hash, not GGUF), removes it.

An add never registers a file before it is complete, sha256-hashed (and checked against the
expected hash when one is given) and opened successfully as GGUF or .smq; only then is it
renamed to ``<id>.gguf`` / ``<id>.smq`` and the manifest rewritten (temp file + ``os.replace``,
under the lock), so an interrupted or failed add leaves neither an entry nor a half file under the final name.
A manifest that is not valid JSON of the expected shape is reported, never replaced.

Python API (the server uses it)::

    reg = Registry(resolve_cache_dir())
    entry = reg.get("my-model")      # ModelEntry; entry.path is the GGUF file
    reg.verify("my-model", full=False)  # cheap size check; full=True re-hashes
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smallmind.default_model import DefaultModelError, default_model
from smallmind.download import DEFAULT_TIMEOUT, Progress, download, is_url, remove_sidecar
from smallmind.errors import ModelFormatError, ModelNotFoundError, RegistryError
from smallmind.model_entry import ModelEntry, check_sha, inspect_model, validate_id

__all__ = ["Registry", "resolve_cache_dir", "sha256_file"]

MANIFEST_NAME = "manifest.json"
LOCK_NAME = "manifest.lock"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def resolve_cache_dir(
    cli_value: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Path:
    """``--cache-dir`` > ``$SMALLMIND_CACHE_DIR`` > ``$XDG_CACHE_HOME/smallmind/models``
    (only if absolute, per the XDG spec) > ``~/.cache/smallmind/models``."""
    if cli_value:
        return Path(os.path.expanduser(os.fspath(cli_value)))
    env = environ.get("SMALLMIND_CACHE_DIR")
    if env:
        return Path(os.path.expanduser(env))
    xdg = environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "smallmind" / "models"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".cache" / "smallmind" / "models"


def _os_error(e: OSError, what: str = "") -> RegistryError:
    name = f"{e.filename}: " if e.filename else ""
    return RegistryError(f"{what}{name}{e.strerror or e}")


def sha256_file(path: str | os.PathLike[str], progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            if progress is not None:
                progress.update(len(block))
    return h.hexdigest()


@contextlib.contextmanager
def _progress(label: str, total: int, shown: bool) -> Iterator[Progress]:
    """A progress bar for ``total`` bytes, drawn only when ``shown`` and on a terminal,
    closed (its line ended) however the work ends."""
    bar = Progress(label, total=total, enabled=None if shown else False)
    try:
        yield bar
    finally:
        bar.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_digest(source: str, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise RegistryError(
            f"sha256 mismatch for {source}: got {digest}, expected {expected}; nothing was registered"
        )


def _new_entry(
    model_id: str, summary, file: str, source: str, size: int, digest: str, *, linked: bool, path: Path
) -> ModelEntry:
    """The entry of a file just hashed and inspected (``summary``: what inspect_model found)."""
    return ModelEntry(
        id=model_id,
        file=file,
        source=source,
        size=size,
        sha256=digest,
        format=summary.format,
        architecture=summary.architecture,
        quant_type=summary.quant_type,
        n_params=summary.n_params,
        added=_now(),
        linked=linked,
        path=path,
    )


# ====================================================================== registry
class Registry:
    def __init__(self, cache_dir: str | os.PathLike[str] | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else resolve_cache_dir()
        self.manifest_path = self.cache_dir / MANIFEST_NAME
        self.lock_path = self.cache_dir / LOCK_NAME

    def __repr__(self) -> str:
        return f"Registry({str(self.cache_dir)!r})"

    def final_path(self, model_id: str, fmt: str = "gguf") -> Path:
        """Where a model we own lives: ``<id>.gguf`` or ``<id>.smq`` by its format.  (An
        add in progress is ``final_path(id) + ".part"`` whatever the format.)"""
        return self.cache_dir / f"{validate_id(model_id)}.{fmt}"

    # ------------------------------------------------------------------ manifest
    def _load(self) -> dict[str, ModelEntry]:
        try:
            with open(self.manifest_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise _os_error(e, "cannot read the manifest: ") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
                raise ValueError('expected an object with a "models" object')
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            return {k: ModelEntry.from_json(k, v, self.cache_dir) for k, v in data["models"].items()}
        except (ValueError, UnicodeError) as e:
            raise RegistryError(
                f"manifest {self.manifest_path} is corrupt ({e}); fix it or "
                f"move it aside (it was left unchanged)"
            ) from None

    def _save(self, entries: dict[str, ModelEntry]) -> None:
        data = {"version": MANIFEST_VERSION, "models": {k: entries[k].to_json() for k in sorted(entries)}}
        tmp = self.manifest_path.with_name(f"{MANIFEST_NAME}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(self.cache_dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock on manifest.lock for a whole read-modify-write."""
        self._mkdir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _mkdir(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(e, "cannot create the cache directory: ") from None

    @contextlib.contextmanager
    def _part_file(self, model_id: str) -> Iterator[tuple[Any, str]]:
        """Opens ``<id>.gguf.part`` (created if absent, contents kept) with an exclusive,
        non-blocking flock so two adds of one id never write the same file."""
        self._mkdir()
        part = str(self.final_path(model_id)) + ".part"
        for _ in range(10):
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RegistryError(
                    f"another add of {model_id!r} is in progress ({part} is locked)"
                ) from None
            try:
                st = os.stat(part)
            except FileNotFoundError:
                st = None
            fst = os.fstat(fd)
            if st is not None and (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev):
                break
            os.close(fd)  # renamed into place by another add meanwhile: open the new one
        else:  # pragma: no cover
            raise RegistryError(f"cannot lock {part}")
        f = os.fdopen(fd, "r+b")
        try:
            yield f, part
        finally:
            f.close()

    # ------------------------------------------------------------------ queries
    def list(self) -> list[ModelEntry]:
        return [e for _, e in sorted(self._load().items())]

    def get(self, model_id: str) -> ModelEntry:
        validate_id(model_id)
        entry = self._load().get(model_id)
        if entry is None:
            raise ModelNotFoundError(
                f"no model {model_id!r} in {self.cache_dir} (see `smallmind model list`)"
            )
        return entry

    def verify(self, model_id: str, full: bool = True, progress: bool = False) -> ModelEntry:
        """Checks the file exists with the recorded size and (``full``) sha256.  Returns
        the entry, or raises RegistryError saying what differs."""
        e = self.get(model_id)
        try:
            size = os.stat(e.path).st_size
        except FileNotFoundError:
            raise RegistryError(f"model {model_id!r}: file {e.path} is missing") from None
        except OSError as err:
            raise _os_error(err, f"model {model_id!r}: ") from None
        if size != e.size:
            raise RegistryError(
                f"model {model_id!r}: file {e.path} has {size} bytes, the "
                f"manifest records {e.size} (modified or truncated)"
            )
        if full:
            try:
                with _progress(f"verify {model_id}", size, progress) as bar:
                    digest = sha256_file(e.path, bar)
            except OSError as err:
                raise _os_error(err, f"model {model_id!r}: ") from None
            if digest != e.sha256:
                raise RegistryError(
                    f"model {model_id!r}: sha256 of {e.path} is {digest}, the "
                    f"manifest records {e.sha256} (file modified or corrupt)"
                )
        return e

    def describe(self, model_id: str) -> dict[str, Any]:
        """The entry plus what the model file says: context length, vocabulary size, chat
        template presence, tensor counts per type (as served)."""
        from smallmind.modelfile import open_model_file

        e = self.get(model_id)
        try:
            with open_model_file(e.path) as g:
                md = g.metadata
                arch = g.architecture
                tokens = md.get("tokenizer.ggml.tokens")
                vocab = len(tokens) if tokens is not None else md.get(f"{arch}.vocab_size")
                types = collections.Counter(t.type_name for t in g.tensors.values())
                return {
                    "entry": e,
                    "architecture": arch,
                    "context_length": md.get(f"{arch}.context_length"),
                    "vocab_size": vocab,
                    "chat_template": isinstance(md.get("tokenizer.chat_template"), str),
                    "name": md.get("general.name"),
                    "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
                    "n_tensors": len(g.tensors),
                }
        except FileNotFoundError:
            raise RegistryError(f"model {model_id!r}: file {e.path} is missing") from None
        except ModelFormatError as err:
            raise RegistryError(f"model {model_id!r}: {err}") from None
        except OSError as err:
            raise _os_error(err, f"model {model_id!r}: ") from None

    # ------------------------------------------------------------------ changes
    def remove(self, model_id: str) -> ModelEntry:
        """Unregisters the model and deletes its file if we own it (a ``--link``ed file is
        left alone; only our symlink to it goes)."""
        validate_id(model_id)
        with self._locked():
            entries = self._load()
            e = entries.pop(model_id, None)
            if e is None:
                raise ModelNotFoundError(f"no model {model_id!r} in {self.cache_dir}")
            self._save(entries)
        victim = self.final_path(model_id, e.format) if e.linked else e.path
        if not e.linked or victim.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
        return e

    def _refuse_duplicate(self, model_id: str, force: bool) -> None:
        if not force and model_id in self._load():
            raise RegistryError(f"model id {model_id!r} is already registered (use --force to replace it)")

    def _register(self, tmp: str, entry: ModelEntry, force: bool) -> ModelEntry:
        """Under the manifest lock: refuse a duplicate, rename ``tmp`` to the final name,
        record the entry.  On failure the final name is not left behind."""
        final = self.final_path(entry.id, entry.format)
        with self._locked():
            entries = self._load()
            old = entries.get(entry.id)
            if old is not None and not force:
                raise RegistryError(
                    f"model id {entry.id!r} is already registered (use --force to replace it)"
                )
            os.replace(tmp, final)
            entries[entry.id] = entry
            try:
                self._save(entries)
            except BaseException:
                with contextlib.suppress(OSError):
                    final.unlink()
                raise
        if old is not None and not old.linked and old.path != final:
            with contextlib.suppress(OSError):
                old.path.unlink()
        return entry

    def _finish(
        self, part: str, model_id: str, source: str, digest: str, size: int, expected: str | None, force: bool
    ) -> ModelEntry:
        _check_digest(source, digest, expected)
        summary = inspect_model(part, source)
        final = self.final_path(model_id, summary.format)
        entry = _new_entry(model_id, summary, final.name, source, size, digest, linked=False, path=final)
        return self._register(part, entry, force)

    def add(self, source: str, model_id: str | None = None, **kw: Any) -> ModelEntry:
        """``source`` is ``"default"``, an http(s) URL or a local path."""
        if source == "default":
            if kw.pop("link", False):
                raise RegistryError("--link does not apply to the default model")
            if kw.pop("sha256", None) is not None:
                raise RegistryError("--sha256 does not apply to the default model")
            return self.add_default(model_id or default_model().id, **kw)
        if model_id is None:
            raise RegistryError("--id is required")
        if is_url(source):
            if kw.pop("link", False):
                raise RegistryError("--link applies to local files only")
            return self.add_url(source, model_id, **kw)
        if "://" in source:
            raise RegistryError(f"unsupported URL scheme in {source!r} (use http or https)")
        return self.add_path(source, model_id, **kw)

    def add_path(
        self,
        path: str | os.PathLike[str],
        model_id: str,
        *,
        sha256: str | None = None,
        link: bool = False,
        force: bool = False,
        progress: bool = False,
    ) -> ModelEntry:
        """Copies (or, with ``link``, symlinks) a local GGUF or .smq file into the registry."""
        validate_id(model_id)
        expected = check_sha(sha256)
        src = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.exists(src):
            raise RegistryError(f"no such file: {src}")
        if not os.path.isfile(src):
            raise RegistryError(f"not a regular file: {src}")
        self._refuse_duplicate(model_id, force)
        if link:
            try:
                return self._add_link(src, model_id, expected, force, progress)
            except OSError as e:
                raise _os_error(e) from None
        with self._scratch_file(model_id) as (f, part):
            f.seek(0)
            f.truncate()
            h = hashlib.sha256()
            with _progress(f"copy {model_id}", os.path.getsize(src), progress) as bar, open(src, "rb") as s:
                while block := s.read(_CHUNK):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
            return self._finish(part, model_id, src, h.hexdigest(), f.tell(), expected, force)

    @contextlib.contextmanager
    def _scratch_file(self, model_id: str) -> Iterator[tuple[Any, str]]:
        """The locked ``.part`` file of an add that cannot be resumed (a copy, an assembly):
        removed unless the add registers it; OS errors become RegistryError."""
        try:
            with self._part_file(model_id) as (f, part):
                try:
                    yield f, part
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(part)
                    raise
        except OSError as e:
            raise _os_error(e) from None

    def _add_link(
        self, src: str, model_id: str, expected: str | None, force: bool, progress: bool
    ) -> ModelEntry:
        size = os.path.getsize(src)
        with _progress(f"hash {model_id}", size, progress) as bar:
            digest = sha256_file(src, bar)
        _check_digest(src, digest, expected)
        summary = inspect_model(src)
        self._mkdir()
        final = self.final_path(model_id, summary.format)
        tmp = f"{final}.link.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(src, tmp)
        entry = _new_entry(model_id, summary, src, src, size, digest, linked=True, path=Path(src))
        try:
            return self._register(tmp, entry, force)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def add_url(
        self,
        url: str,
        model_id: str,
        *,
        sha256: str | None = None,
        force: bool = False,
        progress: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ModelEntry:
        """Downloads (resuming an interrupted ``.part``), verifies and registers."""
        validate_id(model_id)
        expected = check_sha(sha256)
        if not is_url(url):
            raise RegistryError(f"not an http(s) URL: {url!r}")
        self._refuse_duplicate(model_id, force)
        try:
            with self._part_file(model_id) as (f, part):
                try:
                    digest, size = download(url, f, part, timeout=timeout, progress=progress, label=model_id)
                except BaseException:
                    if os.fstat(f.fileno()).st_size == 0:  # nothing to resume
                        with contextlib.suppress(OSError):
                            os.unlink(part)
                        remove_sidecar(part)
                    raise
                try:
                    os.fsync(f.fileno())
                    entry = self._finish(part, model_id, url, digest, size, expected, force)
                except RegistryError:
                    # the bytes are complete but wrong (hash, format) or the id was taken
                    # meanwhile: nothing worth resuming
                    with contextlib.suppress(OSError):
                        os.unlink(part)
                    remove_sidecar(part)
                    raise
                remove_sidecar(part)
                return entry
        except OSError as e:
            raise _os_error(e) from None

    def add_default(
        self, model_id: str | None = None, *, force: bool = False, progress: bool = False
    ) -> ModelEntry:
        """Registers the default model (see smallmind.default_model) from its package, under
        its own id unless ``model_id`` names another."""
        model = default_model()
        model_id = validate_id(model_id or model.id)
        try:
            expected = model.expected_sha256()
        except DefaultModelError as e:
            raise RegistryError(str(e)) from None
        self._refuse_duplicate(model_id, force)
        with self._scratch_file(model_id) as (_, part):
            try:
                model.assemble(part)
            except DefaultModelError as e:
                raise RegistryError(str(e)) from None
            size = os.path.getsize(part)
            with _progress(f"verify {model_id}", size, progress) as bar:
                digest = sha256_file(part, bar)
            return self._finish(part, model_id, model.source, digest, size, expected, force)
