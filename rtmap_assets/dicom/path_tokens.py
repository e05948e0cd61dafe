"""File references beyond the bronze catalog (rule 17, `privacy.hash_export_paths`).

A token is `#` + the first 12 hex digits of the SHA-1 of a file's catalog path: stable, opaque, and
resolvable only through `dicom_files` (which keeps the path). Export folder names often carry study
dates or descriptions; tokens keep them out of the manifest, the issue rows and their messages.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

import polars as pl


def path_token(path: str) -> str:
    return "#" + hashlib.sha1(path.encode()).hexdigest()[:12]


def is_token(ref: str) -> bool:
    return bool(re.fullmatch(r"#[0-9a-f]{12}", ref))


def redact(text: str | None, paths: Iterable[str]) -> str | None:
    """`text` with every occurrence of a catalog path replaced by its token (longest paths first)."""
    if not text:
        return text
    for p in sorted(set(paths), key=len, reverse=True):
        if p and p in text:
            text = text.replace(p, path_token(p))
    return text


def resolver(paths: Iterable[str]) -> Mapping[str, str]:
    """token -> catalog path, for the paths a reader may need."""
    return {path_token(p): p for p in paths}


def tokenise_manifest(manifest: pl.DataFrame, issues: pl.DataFrame,
                      paths: Iterable[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The manifest and its issue rows as stored: files named by catalog tokens, paths redacted in texts.

    Applied where they are written to the lake (the asset layer), so the pure functions keep real paths."""
    known = set(paths)
    manifest = manifest.with_columns(
        pl.col("files").map_elements(lambda fs: [path_token(f) if f in known else f for f in fs],
                                     return_dtype=pl.List(pl.String)),
        pl.col("reason").map_elements(lambda t: redact(t, known), return_dtype=pl.String))
    issues = issues.with_columns(
        pl.col("message").map_elements(lambda t: redact(t, known), return_dtype=pl.String),
        pl.col("file").map_elements(lambda t: redact(t, known), return_dtype=pl.String))
    return manifest, issues
