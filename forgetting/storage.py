"""Content-addressed folders, written whole or not at all.

Every data product lives in a folder named by the hash of what determines it, so a rerun finds it and
two studies that need the same product share it. `write_once` fills a private temporary sibling and
renames it into place at the end: a killed writer leaves no half folder, and when two processes make the
same product at once, the first rename wins and the other's identical copy is dropped; `one_maker` lets a
second process wait for the first instead of making it again (seeds run side by side share the puzzles, the
held-out sets and the base's evaluation). A stored JSON file that cannot be read (read_json, read_json_lines)
is named with the product folder to delete to have it made anew. Also: a folder's content as one hash
(files_sha256), where an installed package's own data files lie (package_path), and images saved on threads
(image_saver).
"""

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forgetting.schema import ConfigError

# The kinds of product an output folder holds, one folder each: <output>/<kind>/<product>/...
PRODUCT_KINDS = ("arms", "base", "evals", "puzzles", "world")


def product_dir(output: Path, kind: str, name: str) -> Path:
    """Where a product of a kind lives in an output folder: <output>/<kind>/<name>."""
    if kind not in PRODUCT_KINDS:
        raise ValueError(f"unknown kind of product {kind!r}; the kinds are {PRODUCT_KINDS}")
    return Path(output) / kind / name


class DamagedFile(ConfigError):
    """A stored file that cannot be read (changed or cut short after it was written whole); the message names it
    and the product folder to delete to have it made anew."""


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj: what names every content-addressed folder."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def files_sha256(root: Path, files: list[Path] | None = None) -> str:
    """sha256 over files under root (default: every file under it, sorted), each as its path relative to root and
    its bytes, in the order given: a folder's content."""
    root = Path(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()) if files is None else files:
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def package_path(package: str, *parts: str) -> Path:
    """A file or folder an installed package ships, found without importing the package (scikit-learn's import
    takes about a second, and every process that draws the tiny world's digits would pay it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)


def rows_dataset(rows: list[dict]):
    """rows as an in-memory datasets.Dataset whose fingerprint is the hash of its rows. Left to itself, datasets
    fingerprints a new table by pickling it with dill, whose search for a function's globals disassembles the
    function through print: under a Prefect run that logs prints, that bytecode would land in the run's log."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable.from_pylist(rows), fingerprint=stable_hash(rows)[:16])


def read_json(path: Path) -> Any:
    """A stored JSON file's content; DamagedFile naming it when it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedFile(f"{path} cannot be read ({err}){remake(path)}") from None


def read_json_lines(path: Path) -> list:
    """A stored JSON-lines file's rows; DamagedFile naming it and the line when one does not parse."""
    rows: list = []
    try:
        with open(path) as f:
            for line in f:
                rows.append(json.loads(line))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedFile(f"{path} cannot be read (line {len(rows) + 1}: {err}){remake(path)}") from None
    return rows


def remake(path: Path) -> str:
    """'; delete <product folder> and ...' for a product of an output folder or a file or folder inside one, else
    ''."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if folder.parent.name in PRODUCT_KINDS:
            return f"; delete {folder} and run again to have it made anew"
    return ""


@contextmanager
def write_once(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside final; on success it becomes final (unless final appeared
    meanwhile, written by another process); on failure it is removed."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # another process finished first; its folder is identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def one_maker(final: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on making final: a process that finds final missing and takes the lock while another
    process of this machine is making it waits, then finds it made. Check inside the lock. With wait=False, yields
    False at once (and holds nothing) when another process holds the lock, True when this one took it. The lock
    files lie in the system's temporary folder, named by final's path, so that no output folder holds anything but
    products."""
    import fcntl

    locks = Path(tempfile.gettempdir()) / "forgetting-locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{stable_hash(str(Path(final).resolve()))[:32]}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_text_once(path: Path, text: str) -> None:
    """Write a file whole: a temporary sibling, then an atomic rename over path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def image_saver(pending: int = 64) -> Iterator[Callable]:
    """Yield save(image, path): the PIL image saved on one of os.cpu_count() threads (Pillow lets go of the GIL
    while it encodes: a 112 px PNG takes ~2 ms, and a puzzle set writes thousands), at most `pending` waiting at a
    time. Leaving waits for every save and raises the first error; the files are those image.save writes."""
    futures: deque = deque()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="image-saver") as pool:

        def save(image, path: Path) -> None:
            futures.append(pool.submit(image.save, path))
            while len(futures) > pending:
                futures.popleft().result()

        yield save
        while futures:
            futures.popleft().result()
