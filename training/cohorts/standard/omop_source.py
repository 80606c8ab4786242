"""Where an OMOP instance is read from: a folder of CSV/Parquet tables (DuckDB views over the
files) or a database URL (SQLAlchemy, PostgreSQL tested). Both run the same SQL (`omop_cdm`),
return small results as pandas frames and stream large ones in batches (constant memory), and
hash what they read for the manifest: the files' bytes, or the rows a database returned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from training.cohorts.standard import SourceError
from training.cohorts.standard.manifest import mask_url
from training.cohorts.standard.omop_cdm import OPTIONAL, REQUIRED
from training.provenance import files_sha256

TABLES = (*REQUIRED, *OPTIONAL)
SUFFIXES = (".parquet", ".csv", ".csv.gz")


class Source:
    """The interface the importer uses; `tables` maps each table present to its SQL name."""

    kind: str
    location: str
    tables: dict[str, str]

    def frame(self, sql: str) -> pd.DataFrame:
        raise NotImplementedError

    def batches(self, sql: str, rows: int) -> Iterator[pd.DataFrame]:
        raise NotImplementedError

    def columns(self, table: str) -> set[str]:
        """The table's column names, lower case (`SELECT * ... WHERE 1 = 0`: no rows read)."""
        empty = self.frame(f"SELECT * FROM {self.tables[table]} WHERE 1 = 0")
        return {str(c).lower() for c in empty.columns}

    def sha256(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine."""


def open_source(
    source: str | Path, *, schema: str | None, settings: Mapping[str, str] | None
) -> Source:
    """A folder (a path) or a database (a URL with `://`)."""
    if isinstance(source, str) and "://" in source:
        return DatabaseSource(source, schema)
    folder = Path(source)
    if not folder.is_dir():
        raise SourceError(f"unreadable_source: {folder} is not a folder of OMOP tables")
    return FolderSource(folder, settings or {})


class FolderSource(Source):
    """One DuckDB view per table file: `<table>.parquet`, `<table>.csv` (or `.csv.gz`), or a
    folder `<table>/` of Parquet parts. CSV columns are typed by their OMOP names (ids and
    concept ids integers, `*_date` dates, `*_datetime` timestamps, codes and names text)."""

    kind = "omop-folder"

    def __init__(self, folder: Path, settings: Mapping[str, str]) -> None:
        import duckdb

        self.location = str(folder)
        # DuckDB draws progress bars on stdout by default: the command prints its own tables
        self.connection = duckdb.connect(":memory:")
        self.connection.execute("SET enable_progress_bar = false")
        for name, value in settings.items():
            self.connection.execute(f"SET {name} = {_quote(str(value))}")
        self.files: list[Path] = []
        self.tables = {}
        for path in sorted(folder.iterdir()):
            table, reader = _reader(path)
            if table not in TABLES:
                continue
            if table in self.tables:
                raise SourceError(f"ambiguous_table: {folder} holds more than one {table} table")
            self.connection.execute(f'CREATE VIEW "{table}" AS SELECT * FROM {reader}')
            self.tables[table] = f'"{table}"'
            self.files.append(path)

    def frame(self, sql: str) -> pd.DataFrame:
        try:
            return self.connection.sql(sql).to_arrow_table().to_pandas(date_as_object=False)
        except Exception as error:  # duckdb's errors: a file it cannot read or parse
            raise SourceError(f"unreadable_source: {self.location}: {error}") from None

    def batches(self, sql: str, rows: int) -> Iterator[pd.DataFrame]:
        try:
            for batch in self.connection.sql(sql).to_arrow_reader(rows):
                yield batch.to_pandas(date_as_object=False)
        except Exception as error:  # duckdb's errors: a file it cannot read or parse
            raise SourceError(f"unreadable_source: {self.location}: {error}") from None

    def sha256(self) -> str:
        return files_sha256(self.files)

    def close(self) -> None:
        self.connection.close()


def _reader(path: Path) -> tuple[str, str]:
    """(table name, DuckDB table function reading it) for a file or folder of the instance."""
    name = path.name.lower()
    where = _quote(str(path))
    if path.is_dir():
        return name, f"read_parquet({_quote(str(path / '*.parquet'))})"
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            table = name[: -len(suffix)]
            if suffix == ".parquet":
                return table, f"read_parquet({where})"
            return table, f"read_csv({where}, header = true{_csv_types(path)})"
    return "", ""


def _csv_types(path: Path) -> str:
    """`, types = {...}` for the header's columns whose OMOP type follows from their name."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    types = {}
    for raw in header:
        column = raw.strip().strip('"')
        kind = _omop_type(column.lower())
        if kind:
            types[column] = kind
    if not types:
        return ""
    return ", types = {" + ", ".join(f"{_quote(c)}: '{k}'" for c, k in types.items()) + "}"


def _omop_type(column: str) -> str | None:
    if column.endswith("_datetime"):
        return "TIMESTAMP"
    if column.endswith("_date"):
        return "DATE"
    if column.endswith("_id") and column not in ("vocabulary_id", "domain_id", "concept_class_id",
                                                 "relationship_id"):  # fmt: skip
        return "BIGINT"
    if column in ("year_of_birth", "month_of_birth", "day_of_birth"):
        return "BIGINT"
    if column in ("value_as_number", "range_low", "range_high"):
        return "DOUBLE"
    if column.endswith(("_source_value", "_name", "_code")) or column in (
        "vocabulary_id", "domain_id", "concept_class_id", "relationship_id", "standard_concept",
        "invalid_reason",
    ):  # fmt: skip
        return "VARCHAR"
    return None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class DatabaseSource(Source):
    """A database by SQLAlchemy URL; `schema` names the CDM schema (default: the connection's
    search path). Large results are fetched with a server-side cursor, `rows` at a time."""

    kind = "omop-database"

    def __init__(self, url: str, schema: str | None) -> None:
        import sqlalchemy

        self.location = mask_url(url)
        try:
            self.engine = sqlalchemy.create_engine(url)
            with self.engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except Exception as error:  # a bad URL, driver, host or password
            raise SourceError(
                f"unreadable_source: cannot connect to {self.location}: "
                f"{type(error).__name__}: {str(error).splitlines()[0]}"
            ) from None
        prefix = f'"{schema}".' if schema else ""
        self.digest = hashlib.sha256()
        self.tables = {}
        for table in TABLES:
            try:
                self._rows(f"SELECT * FROM {prefix}{table} WHERE 1 = 0")
            except Exception:  # not there (or not readable): treated as absent
                continue
            self.tables[table] = f"{prefix}{table}"

    def _rows(self, sql: str) -> pd.DataFrame:
        import sqlalchemy

        with self.engine.connect() as connection:
            result = connection.execute(sqlalchemy.text(sql))
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def frame(self, sql: str) -> pd.DataFrame:
        frame = self._rows(sql)
        self._hash(frame)
        return frame

    def batches(self, sql: str, rows: int) -> Iterator[pd.DataFrame]:
        import sqlalchemy

        with self.engine.connect() as connection:
            streamed = connection.execution_options(stream_results=True, max_row_buffer=rows)
            result = streamed.execute(sqlalchemy.text(sql))
            columns = list(result.keys())
            for part in result.partitions(rows):
                frame = pd.DataFrame(part, columns=columns)
                self._hash(frame)
                yield frame

    def _hash(self, frame: pd.DataFrame) -> None:
        self.digest.update(",".join(frame.columns).encode())
        self.digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())

    def sha256(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        self.engine.dispose()
