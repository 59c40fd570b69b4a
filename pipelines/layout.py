"""Where each kind of file lives in a project folder (the embedded default)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Settings


@dataclass(frozen=True)
class Layout:
    root: Path
    validated_dir: str = "data/validated"  # DVC-tracked (data/validated.dvc)

    @classmethod
    def of(cls, settings: Settings, validated_dir: str = "data/validated") -> Layout:
        return cls(settings.root, validated_dir)

    @property
    def staging(self) -> Path:
        """Temporary files of writes into DVC-tracked folders (same filesystem, outside them)."""
        return self.root / ".mlops" / "staging"

    @property
    def incoming(self) -> Path:
        return self.root / "data" / "incoming"

    @property
    def validated(self) -> Path:
        return self.root / self.validated_dir

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def window(self) -> Path:
        return self.root / "data" / "window"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def predictions(self) -> Path:
        return self.root / "data" / "predictions"

    def predictions_file(self, day: dt.date) -> Path:
        return self.predictions / f"{day.isoformat()}.parquet"

    def served_dir(self, day: dt.date) -> Path:
        """The serving API's prediction log for a UTC day: one file per flush."""
        return self.predictions / "served" / day.isoformat()

    def monitor_dir(self, day: dt.date) -> Path:
        return self.reports / "monitor" / day.isoformat()

    def incoming_batch(self, day: dt.date) -> Path:
        return self.incoming / f"{day.isoformat()}.parquet"

    def validated_batch(self, day: dt.date) -> Path:
        return self.validated / f"{day.isoformat()}.parquet"

    def quarantine_dir(self, day: dt.date) -> Path:
        return self.quarantine / day.isoformat()

    def validated_days(self) -> list[dt.date]:
        if not self.validated.is_dir():
            return []
        return sorted(dt.date.fromisoformat(p.stem) for p in self.validated.glob("????-??-??.parquet"))

    def quarantined_days(self) -> list[dt.date]:
        if not self.quarantine.is_dir():
            return []
        return sorted(dt.date.fromisoformat(p.name) for p in self.quarantine.glob("????-??-??"))
