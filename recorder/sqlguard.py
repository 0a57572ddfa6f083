"""`recorder sql` is read-only over the data dir: it never adds, replaces or deletes a file there.

Two layers. The statement allow-list is what keeps writes out of the data dir; DuckDB's own lock
keeps everything else out (its allowed directories do not tell reading from writing, so inside the
data dir it cannot refuse a write by itself):

1. Statement allow-list (DuckDB's own parser, `duckdb.extract_statements`): only SELECT-like
   statements (SELECT, WITH, FROM-first, VALUES, DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN
   of them run. COPY, EXPORT, ATTACH, SET/RESET, PRAGMA, INSTALL/LOAD, CREATE (which includes
   persistent secrets) and every other statement are refused before anything runs. With
   `--write`, COPY ... TO and EXPORT DATABASE are allowed too, to a local path outside the data
   dir, read from the statement's string literal.
2. DuckDB settings, locked: `enable_external_access = false` with `allowed_directories` = the data
   dir (to read it) and, with `--write`, the export target; `lock_configuration = true` so no
   SET/RESET can undo it; spill files go to a private temp directory, never the working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

from recorder.errors import RecorderError

ST = duckdb.StatementType
_READ = {ST.SELECT}
_EXPORT = {ST.COPY, ST.EXPORT}
_EXPLAIN_HEAD = re.compile(r"\s*explain\b(\s+analy[sz]e\b)?\s*(\((?:[^()']|'[^']*')*\))?", re.IGNORECASE)


def _kind(st: duckdb.Statement) -> str:
    return str(st.type).rsplit(".", 1)[-1]


def _parse(query: str) -> list[duckdb.Statement]:
    try:
        return duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise RecorderError(str(exc).splitlines()[0]) from None


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(text, kind) of each token, comments dropped."""
    toks = [(pos, str(kind).rsplit(".", 1)[-1]) for pos, kind in duckdb.tokenize(sql)]
    out = []
    for i, (pos, kind) in enumerate(toks):
        end = toks[i + 1][0] if i + 1 < len(toks) else len(sql)
        if kind != "comment":
            out.append((sql[pos:end].strip(), kind))
    return out


def _skip_comments(sql: str) -> str:
    """The statement from its first token on (leading comments dropped)."""
    for pos, kind in duckdb.tokenize(sql):
        if str(kind).rsplit(".", 1)[-1] != "comment":
            return sql[pos:]
    return ""


def _literal(text: str) -> str | None:
    if len(text) < 2 or text[0] != "'" or text[-1] != "'":
        return None  # E'..', $$..$$ and the like: refused rather than interpreted
    return text[1:-1].replace("''", "'")


def export_target(sql: str, kind: str) -> str | None:
    """The path a COPY ... TO or EXPORT DATABASE writes to (None if it is not a plain literal)."""
    depth = 0
    toks = _tokens(sql)
    for i, (text, tok) in enumerate(toks):
        if tok == "operator":
            depth += text.count("(") - text.count(")")
            continue
        if depth:
            continue
        if kind == "COPY" and tok == "keyword" and text.lower() == "from":
            return None  # COPY table FROM file: an import, not an export
        if kind == "COPY" and tok == "keyword" and text.lower() == "to":
            nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
            return _literal(nxt[0]) if nxt[1] == "string_const" else None
        if kind == "EXPORT" and tok == "string_const":
            return _literal(text)
    return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def vet(query: str, data_dir: Path, write: bool = False) -> list[Path]:
    """Refuse any statement that could write; returns the export targets (`write` only)."""
    statements = _parse(query)
    if not statements:
        raise RecorderError("no SQL statement given")
    targets: list[Path] = []
    for st in statements:
        kind = _kind(st)
        if st.type in _READ:
            continue
        if st.type == ST.EXPLAIN:
            text = _skip_comments(st.query)
            head = _EXPLAIN_HEAD.match(text)
            inner = _parse(text[head.end() :]) if head else []
            if inner and all(s.type in _READ for s in inner):
                continue  # EXPLAIN ANALYZE runs its statement: only a read may follow
            raise RecorderError("recorder sql is read-only: EXPLAIN is allowed only for a SELECT")
        if st.type in _EXPORT and write:
            targets.append(_check_target(st.query, kind, data_dir))
            continue
        hint = " (add --write to export to a path outside the data dir)" if st.type in _EXPORT else ""
        raise RecorderError(f"recorder sql is read-only: {kind} statements are refused{hint}")
    return targets


def _check_target(sql: str, kind: str, data_dir: Path) -> Path:
    target = export_target(sql, kind)
    if target is None:
        raise RecorderError(
            f"--write: the {kind} target must be a plain 'quoted' local path (COPY ... TO 'path')"
        )
    if "://" in target:
        raise RecorderError(f"--write exports to local paths only, not {target}")
    real = _real(target)
    if _inside(real, _real(data_dir)) or _inside(_real(data_dir), real):
        raise RecorderError(f"--write never writes into the data dir: {target} is inside {data_dir}")
    return real


def lock_down(con: duckdb.DuckDBPyConnection, data_dir: Path, targets: list[Path], temp_dir: Path) -> None:
    """No file access but reading the data dir (and writing the export targets); locked.

    A bucket (`S3Url`, read through a registered fsspec filesystem) is allowed by its URL prefix
    `s3://bucket/prefix/`: DuckDB refuses every other path, and the statement allow-list keeps
    writes out of it as it does for a local data dir."""
    if isinstance(data_dir, Path | str):
        local = [os.path.abspath(data_dir), _real(data_dir)]
    else:
        local = [str(data_dir)]  # S3Url: `s3://bucket/prefix`
    allowed_dirs = sorted({f"{p}/" for p in (*local, *targets)})
    allowed_paths = sorted({str(p) for p in targets})
    # a COPY over an existing file writes `tmp_<name>` beside it first, then renames
    allowed_paths += sorted({str(p.with_name(f"tmp_{p.name}")) for p in targets})
    con.execute(f"SET temp_directory = {_quote(str(temp_dir))}")
    con.execute(f"SET allowed_directories = {_sql_list(allowed_dirs)}")
    con.execute(f"SET allowed_paths = {_sql_list(allowed_paths)}")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"
