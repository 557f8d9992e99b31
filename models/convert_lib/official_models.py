"""The official HTDemucs releases and how to fetch them.

File names and bag weights come from demucs' own release lists (demucs/remote/
files.txt and the htdemucs*.yaml bags). A release file is `<signature>-<h>.th` where
`<h>` is a prefix of the file's sha256; demucs (through torch.hub) keeps downloads in
`$TORCH_HOME/hub/checkpoints/` (default `~/.cache/torch/hub/checkpoints/`), so a file
demucs already fetched is reused, and a file fetched here is reused by demucs.

Fetching: look in that cache; otherwise download with urllib to a temporary file in
the cache directory, check the sha256 prefix, and rename it into place. Any network or
checksum failure raises FetchError, whose message says what to do by hand.
"""

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

BASE_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/"
DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20

_ONE_HOT_4 = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]

# name -> files (in bag order) and per-source bag weights (None: all 1.0).
OFFICIAL_MODELS = {
    "htdemucs": {"files": ["955717e8-8726e21a.th"], "weights": None},
    "htdemucs_6s": {"files": ["5c90dfd2-34c22ccb.th"], "weights": None},
    "htdemucs_ft": {
        "files": [
            "f7e0c4bc-ba3fe64a.th",
            "d12395a8-e57c48e6.th",
            "92cfc3b6-ef3bcb9c.th",
            "04573f0d-f3cf25b2.th",
        ],
        "weights": _ONE_HOT_4,
    },
}


class FetchError(Exception):
    """A checkpoint could not be obtained or failed its checksum."""


class CatalogError(ValueError):
    """A model catalog file is malformed."""


def torch_hub_checkpoints_dir():
    """The directory torch.hub (and so demucs) caches checkpoints in."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.path.join(cache, "torch")
    return os.path.join(torch_home, "hub", "checkpoints")


def checksum_prefix(filename):
    """The sha256 prefix a release file name carries (`955717e8-8726e21a.th` ->
    `8726e21a`), or None when the name carries none."""
    stem = filename[:-3] if filename.endswith(".th") else filename
    if "-" not in stem:
        return None
    prefix = stem.rsplit("-", 1)[1].lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        return None
    return prefix


def signature_of(filename):
    return filename.split("-", 1)[0]


def load_catalog(path=None, base_url=None):
    """The built-in catalog, each entry with its `url` (base URL), extended or
    overridden by a JSON catalog file: {"name": {"url": "...", "files": [...],
    "weights": [[...]] or null}} ("url" defaults to the base URL)."""
    base = base_url or os.environ.get("SEP_WEIGHTS_URL") or BASE_URL
    catalog = {
        name: {"url": base, "files": list(entry["files"]), "weights": entry["weights"]}
        for name, entry in OFFICIAL_MODELS.items()
    }
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                extra = json.load(file)
        except (OSError, ValueError) as exc:
            raise CatalogError(f"cannot read model catalog {path}: {exc}")
        if not isinstance(extra, dict):
            raise CatalogError(f"{path}: a catalog is a JSON object of name -> model")
        for name, entry in extra.items():
            files = entry.get("files") if isinstance(entry, dict) else None
            if not files or not all(isinstance(f, str) and f and "/" not in f for f in files):
                raise CatalogError(f"{path}: model {name!r} needs a list of plain file names")
            catalog[name] = {
                "url": entry.get("url") or base,
                "files": list(files),
                "weights": entry.get("weights"),
            }
    for entry in catalog.values():
        if not entry["url"].endswith("/"):
            entry["url"] += "/"
    return catalog


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(filename, done, total, out):
    if total:
        out.write(f"\r  {filename}: {done / 1e6:7.1f} / {total / 1e6:.1f} MB")
    else:
        out.write(f"\r  {filename}: {done / 1e6:7.1f} MB")
    out.flush()


def download(url, directory, filename, expected_prefix, log=sys.stderr):
    """Downloads `url` into `directory/filename` through a temporary file, checking
    the sha256 prefix before the rename. Returns the final path."""
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".partial", dir=directory)
    digest = hashlib.sha256()
    show = hasattr(log, "isatty") and log.isatty()
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "sep-get-weights/1"})
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while True:
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if show:
                        _progress(filename, done, total, log)
                if show:
                    log.write("\n")
                if total and done != total:
                    raise FetchError(f"download of {url} stopped at {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if expected_prefix and not actual.startswith(expected_prefix):
            raise FetchError(
                f"checksum mismatch for {url}: sha256 {actual[:len(expected_prefix)]}..., "
                f"expected {expected_prefix}... (the download is corrupt or not the "
                "official file); nothing was kept"
            )
        final = os.path.join(directory, filename)
        os.chmod(temp, 0o644)
        os.replace(temp, final)
        return final
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = exc
        else:
            reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"could not download {url}: {reason}")
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def verify_cached(path, expected_prefix):
    if not expected_prefix:
        return
    actual = file_sha256(path)
    if not actual.startswith(expected_prefix):
        raise FetchError(
            f"{path} fails its checksum (sha256 {actual[:len(expected_prefix)]}..., "
            f"expected {expected_prefix}...): it is corrupt or incomplete; delete it and rerun"
        )


def fetch_files(entry, cache_dir, log=sys.stderr):
    """Returns local paths of the entry's files, from the cache or downloaded."""
    paths = []
    for filename in entry["files"]:
        prefix = checksum_prefix(filename)
        cached = os.path.join(cache_dir, filename)
        if os.path.exists(cached):
            print(f"using {cached}", file=log)
            verify_cached(cached, prefix)
            paths.append(cached)
            continue
        url = entry["url"] + filename
        print(f"downloading {url}", file=log)
        paths.append(download(url, cache_dir, filename, prefix, log))
    return paths


def offline_instructions(name, entry, cache_dir, rerun=None):
    urls = "\n".join(f"    {entry['url']}{f}" for f in entry["files"])
    return (
        f"To install {name} without network access here, download on another machine:\n"
        f"{urls}\n"
        f"copy the file(s) into {cache_dir}/ (demucs' own cache, also used by torch.hub;\n"
        f"set TORCH_HOME or --cache-dir to use another place) and rerun:\n"
        f"    {rerun or 'models/get-weights ' + name}"
    )
