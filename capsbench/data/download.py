"""Downloads that never leave a half-written or unverified file behind.

A download goes to a temporary file next to its destination, is checked against its sha256
and/or md5, then renamed into place. Archives are extracted into a temporary folder and
renamed, so an interrupted extraction leaves nothing that looks complete. Any network or
checksum failure is a one-line ``DataError`` naming the URL.

Example::

    path = download(["https://mirror-a/x.gz", "https://mirror-b/x.gz"], root / "x.gz", md5="...")
    gunzip(path, root / "x")
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

from capsbench.errors import DataError

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None) -> bool:
    """True when ``path`` exists and matches every checksum given (no checksum: exists)."""
    path = Path(path)
    if not path.is_file():
        return False
    if sha256 and file_digest(path, "sha256") != sha256.lower():
        return False
    if md5 and file_digest(path, "md5") != md5.lower():
        return False
    return True


def download(
    urls: str | Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch the first URL (mirrors in order) that works into ``dest``, verified; no-op when ``dest`` verifies.

    Raises ``DataError`` naming the URL when every mirror fails or the checksum differs.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dest = Path(dest)
    if verify(dest, sha256=sha256, md5=md5):  # without checksums: present is enough
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            _fetch(url, dest, sha256=sha256, md5=md5, progress=progress, timeout=timeout)
            return dest
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(" | ".join(errors) if len(errors) > 1 else errors[0])


def _fetch(url: str, dest: Path, *, sha256, md5, progress: bool, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        hashes = {name: hashlib.new(name) for name, want in (("sha256", sha256), ("md5", md5)) if want}
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "capsbench"})
            with urllib.request.urlopen(request, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                fd = None
                total = int(response.headers.get("Content-Length") or 0) or None
                with _progress_bar(dest.name, total, progress) as advance:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        for h in hashes.values():
                            h.update(block)
                        advance(len(block))
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(
                f"could not download {url}: {reason}; check the network, or copy the file to {dest}"
            ) from None
        for name, h in hashes.items():
            want = (sha256 if name == "sha256" else md5).lower()
            if h.hexdigest() != want:
                raise DataError(
                    f"download of {url} failed its {name} check (expected {want}, got {h.hexdigest()}); "
                    "the server may have changed the file or the transfer was corrupted: retry, "
                    f"or copy a verified file to {dest}"
                )
        os.replace(tmp, dest)
    finally:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


class _progress_bar:
    """A rich progress bar on an interactive terminal, else one line on stderr; yields advance(n)."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        if not sys.stderr.isatty():
            print(f"downloading {self.name} ...", file=sys.stderr)
            return lambda n: None
        try:
            from rich.progress import Progress
        except ImportError:  # pragma: no cover - rich is a dependency
            return lambda n: None
        self._progress = Progress(transient=True)
        self._progress.start()
        task = self._progress.add_task(f"downloading {self.name}", total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


def gunzip(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Decompress ``src`` into ``dest`` atomically; ``DataError`` naming ``src`` when it is not valid gzip."""
    src, dest = Path(src), Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
        os.replace(tmp, dest)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{src} is not a valid gzip file ({exc}); delete it and download it again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def extract_tar(archive: str | os.PathLike, dest_dir: str | os.PathLike, member: str) -> Path:
    """Extract ``archive`` and move its top folder ``member`` to ``dest_dir/member``, all or nothing."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    target = dest_dir / member
    tmp = Path(tempfile.mkdtemp(prefix=f".{member}.", suffix=".extract", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")  # refuses absolute paths and links out of tmp
                else:  # Python < 3.11.4: the same refusal by hand
                    for m in tf.getmembers():
                        if m.name.startswith("/") or ".." in Path(m.name).parts or m.issym() or m.islnk():
                            raise tarfile.TarError(f"unsafe member {m.name!r}")
                    tf.extractall(tmp)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{archive} could not be extracted ({exc}); delete it and download it again") from None
        if not (tmp / member).is_dir():
            raise DataError(f"{archive} does not contain the folder '{member}'; delete it and download it again")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / member, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
