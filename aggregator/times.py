"""Time zones and local times for the CLI: parsing lecture times and showing report times.

The database stores UTC only. A zone enters at the edges: an ISO 8601 time without a
UTC offset is read as local time in a zone, and reports show local times in a zone.
Zones are IANA names loaded with ``zoneinfo``, so daylight saving changes are applied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aggregator.errors import ConfigError

log = logging.getLogger(__name__)

# Standard location of the system zone on Linux and macOS; a symlink into the zoneinfo tree.
SYSTEM_LOCALTIME = Path("/etc/localtime")


@dataclass(frozen=True, slots=True)
class Zone:
    """A time zone and the name shown for it."""

    name: str
    tzinfo: tzinfo


def resolve_zone(name: str | None) -> Zone:
    """Return the IANA zone ``name``, or the system zone when ``name`` is None or empty.

    Raises:
        ConfigError: no zone has that name.
    """
    if not name:
        return system_zone()
    try:
        return Zone(name, ZoneInfo(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"Unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC "
            "(the tzdata package provides them where the system has none)"
        ) from None


def system_zone() -> Zone:
    """Return the zone of this machine: the TZ variable, else /etc/localtime, else UTC."""
    tz_variable = os.environ.get("TZ", "").lstrip(":")
    if tz_variable:
        try:
            return Zone(tz_variable, ZoneInfo(tz_variable))
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("TZ=%r is not an IANA zone name; using the system zone instead", tz_variable)
    try:
        target = str(SYSTEM_LOCALTIME.resolve())
        if "/zoneinfo/" in target:
            key = target.split("/zoneinfo/", 1)[1]
            return Zone(key, ZoneInfo(key))
        with SYSTEM_LOCALTIME.open("rb") as file:
            return Zone("system local time", ZoneInfo.from_file(file, key="localtime"))
    except (OSError, ZoneInfoNotFoundError, ValueError):
        log.warning("Cannot read the system time zone from %s; using UTC", SYSTEM_LOCALTIME)
        return Zone("UTC", UTC)


def parse_time(text: str, zone: Zone, option: str) -> datetime:
    """Parse an ISO 8601 date and time; without a UTC offset it is local time in ``zone``. Return it in UTC.

    Raises:
        ConfigError: the text is not a date and time, or a local time that the zone skips
            or repeats at a daylight saving change.
    """
    example = "2026-03-02T08:15, or 2026-03-02T08:15+01:00 with an offset"
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"Invalid {option} {text!r}: use an ISO 8601 date and time such as {example}"
        ) from None
    if "T" not in text and " " not in text.strip():
        raise ConfigError(f"{option} {text!r} has no time of day: use {example}")
    return _to_utc(moment, text, zone, option)


def parse_day_or_time(text: str, zone: Zone, option: str) -> datetime:
    """Parse an ISO 8601 date, meaning local midnight in ``zone``, or a date and time as ``parse_time`` does.

    Errors name ``text`` as given, not the midnight that a bare date stands for.

    Raises:
        ConfigError: the text is neither a date nor a date and time, or names a local time
            that the zone skips or repeats.
    """
    stripped = text.strip()
    if "T" in stripped or " " in stripped:
        return parse_time(text, zone, option)
    try:
        day = date.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(
            f"Invalid {option} {text!r}: use an ISO 8601 date such as 2026-03-02, "
            "or a date and time such as 2026-03-02T08:15"
        ) from None
    return _to_utc(datetime.combine(day, time()), text, zone, option)


def _to_utc(moment: datetime, text: str, zone: Zone, option: str) -> datetime:
    # Converting times next to year 1 or 9999 to UTC overflows, and no lecture is held then.
    if not 1970 <= moment.year <= 9000:
        raise ConfigError(f"{option} {text!r} is out of range: use a year from 1970 to 9000")
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)

    local = moment.replace(tzinfo=zone.tzinfo)
    round_trip = local.astimezone(UTC).astimezone(zone.tzinfo).replace(tzinfo=None)
    if round_trip != moment:
        raise ConfigError(
            f"{option} {text!r} does not exist in {zone.name}: the clocks skip it at a daylight "
            "saving change. Give a UTC offset or another time"
        )
    if local.utcoffset() != local.replace(fold=1).utcoffset():
        raise ConfigError(
            f"{option} {text!r} occurs twice in {zone.name} at a daylight saving change: "
            "give a UTC offset to choose one"
        )
    return local.astimezone(UTC)


def format_offset(moment: datetime) -> str:
    """Return the UTC offset of an aware datetime as ``UTC+01:00``."""
    offset = moment.utcoffset()
    if offset is None:
        return "UTC"
    total_min = int(offset.total_seconds() // 60)
    sign = "+" if total_min >= 0 else "-"
    hours, minutes = divmod(abs(total_min), 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"
