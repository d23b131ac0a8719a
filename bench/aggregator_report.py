"""Benchmark: one lecture's report on a simulated semester in SQLite.

The semester has ROOMS rooms with one device each and WEEKS weeks. Each room has 30
lectures a week: 6 a day from Monday to Friday, 90 minutes each with 10 minute breaks,
from 08:00 UTC. Each device sends one 10 s window for every 10 s of every lecture.

Rows are written in the order an aggregator stores them: time after time, and at each
window start the windows of all rooms. One lecture's 540 windows are therefore spread
over the whole time range of the table, each on its own page, as in a real database.
The generator computes each window start's texts once in a small table and writes the
rows with INSERT ... SELECT, one transaction per week, with the journal off; the full
semester (58.3 million windows, about 18 GiB) takes minutes. An existing database with
lectures is reused as it is.

    python bench/aggregator_report.py --rooms 200 --weeks 18 --db /var/tmp/semester.db

It prints the plan of the windows query, then times, for --samples lectures picked at
random: the query (lecture and its windows), the report computation with 60 s steps,
the text rendering and the HTML page. Each lecture is read once before it is timed, so
its pages are in the operating system's page cache. --cold instead drops the database
file from that cache before each sample (posix_fadvise DONTNEED on that file only), so
the query reads its pages from disk.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import text  # noqa: E402

from aggregator.html_report import render_lecture_html  # noqa: E402
from aggregator.report import build_report  # noqa: E402
from aggregator.store import _SQLITE_WINDOWS_IN_ROOM, Store  # noqa: E402
from aggregator.text_report import render_text  # noqa: E402
from aggregator.times import Zone  # noqa: E402

LECTURES_PER_WEEK = 30
LECTURES_PER_DAY = 6
LECTURE_MIN = 90
SLOT_MIN = 100
WINDOW_S = 10
STEPS_PER_LECTURE = LECTURE_MIN * 60 // WINDOW_S
SEMESTER_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FACES = 400

LECTURES_SQL = f"""
WITH RECURSIVE
  room(r) AS (SELECT 0 UNION ALL SELECT r + 1 FROM room WHERE r < :rooms - 1),
  slot(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM slot WHERE k < :weeks * {LECTURES_PER_WEEK} - 1),
  lecture(r, k, start) AS (
    SELECT r, k, datetime('{SEMESTER_START:%Y-%m-%d %H:%M:%S}',
      '+' || ((k / {LECTURES_PER_WEEK}) * 7 + (k % {LECTURES_PER_WEEK}) / {LECTURES_PER_DAY}) || ' days',
      '+' || ((k % {LECTURES_PER_DAY}) * {SLOT_MIN}) || ' minutes')
    FROM room CROSS JOIN slot)
INSERT INTO lectures (room, title, start, "end", course, source)
SELECT printf('R%03d', r), printf('Course %d', k % {LECTURES_PER_WEEK}),
       start || '.000000', datetime(start, '+{LECTURE_MIN} minutes') || '.000000',
       printf('R%03d-C%d', r, k % {LECTURES_PER_WEEK}), 'manual'
FROM lecture
"""

# gen_times has one row per window start (slot k, step i) with rowid k * STEPS + i + 1, so
# a rowid range is a range of time; CROSS JOIN keeps it the outer loop.
WINDOWS_SQL = """
INSERT INTO windows (device_id, room, window_start, window_end, frames_sampled, faces_seen, min_faces,
                     suppressed, counts, received_at)
SELECT 'pi-' || r.room, r.room, t.start_text, t.end_text, 20, 400, 5, t.suppressed, t.counts, t.received_text
FROM gen_times AS t CROSS JOIN gen_rooms AS r
WHERE t.rowid BETWEEN :first AND :last
ORDER BY t.rowid, r.rowid
"""


def _text(moment: datetime) -> str:
    # The stored form of aggregator.store: naive UTC with six fraction digits.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _counts(step: int) -> str | None:
    """Counts JSON of the window at this step of a lecture, as the ingest writes it; None when suppressed."""
    if step % 50 == 7:
        return None
    values = [step % 4, 0, step % 3, 40 + step % 17, 10 + step % 5, step % 6]
    values.append(FACES - sum(values))
    return "{" + ",".join(f'"{label}":{value}' for label, value in zip(LABELS, values, strict=True)) + "}"


def generate(path: Path, rooms: int, weeks: int) -> None:
    began = time.perf_counter()
    slots = weeks * LECTURES_PER_WEEK
    connection = sqlite3.connect(path, isolation_level=None)
    # A benchmark database that a crash would leave half written is generated again, so the
    # generator needs no journal. The large cache keeps the index pages that every window
    # start touches once per room.
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("PRAGMA cache_size = -524288")
    connection.execute("BEGIN")
    connection.execute(LECTURES_SQL, {"rooms": rooms, "weeks": weeks})
    connection.execute("CREATE TEMP TABLE gen_rooms (room TEXT)")
    connection.executemany("INSERT INTO gen_rooms VALUES (?)", [(f"R{room:03d}",) for room in range(rooms)])
    connection.execute(
        "CREATE TEMP TABLE gen_times "
        "(start_text TEXT, end_text TEXT, received_text TEXT, suppressed INT, counts TEXT)"
    )
    counts = [_counts(step) for step in range(STEPS_PER_LECTURE)]
    rows = []
    for slot in range(slots):
        day = (slot // LECTURES_PER_WEEK) * 7 + (slot % LECTURES_PER_WEEK) // LECTURES_PER_DAY
        lecture_start = SEMESTER_START + timedelta(days=day, minutes=(slot % LECTURES_PER_DAY) * SLOT_MIN)
        for step in range(STEPS_PER_LECTURE):
            start = lecture_start + timedelta(seconds=step * WINDOW_S)
            end = start + timedelta(seconds=WINDOW_S)
            received = end + timedelta(seconds=1)
            rows.append((_text(start), _text(end), _text(received), int(counts[step] is None), counts[step]))
    connection.executemany("INSERT INTO gen_times VALUES (?, ?, ?, ?, ?)", rows)
    connection.execute("COMMIT")
    elapsed_s = time.perf_counter() - began
    print(f"  {slots * rooms} lectures, {len(rows)} window starts, {elapsed_s:.0f} s", flush=True)

    per_week = LECTURES_PER_WEEK * STEPS_PER_LECTURE
    for week in range(weeks):
        connection.execute("BEGIN")
        connection.execute(WINDOWS_SQL, {"first": week * per_week + 1, "last": (week + 1) * per_week})
        connection.execute("COMMIT")
        print(f"  week {week + 1} of {weeks}: {(week + 1) * per_week * rooms} windows, "
              f"{time.perf_counter() - began:.0f} s", flush=True)
    connection.close()
    print(f"generated {slots * rooms} lectures in {time.perf_counter() - began:.0f} s")


def drop_from_page_cache(path: Path) -> None:
    """Evict the clean pages of the database file from the operating system's page cache."""
    for name in (path, Path(f"{path}-wal")):
        if name.exists():
            descriptor = os.open(name, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--weeks", type=int, default=18)
    parser.add_argument("--db", type=Path, required=True, help="SQLite file; generated when it has no lectures")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5, help="seed of the random choice of lectures")
    parser.add_argument(
        "--cold", action="store_true", help="drop the database file from the page cache before each sample"
    )
    parser.add_argument("--generate-only", action="store_true", help="generate the database and time nothing")
    args = parser.parse_args()

    zone = Zone("Europe/Berlin", ZoneInfo("Europe/Berlin"))
    if not args.db.exists():
        # The migrations create the tables and indexes, which the generator then fills.
        Store.open(f"sqlite:///{args.db}").close()
        generate(args.db, args.rooms, args.weeks)
    if args.generate_only:
        return 0
    with Store.open(f"sqlite:///{args.db}", upgrade=False) as store:
        with store.engine.connect() as connection:
            lectures = connection.execute(text("SELECT max(id) FROM lectures")).scalar_one()
        # The generator writes one window per step of each lecture; counting the rows of a
        # full semester would read gigabytes before the timing starts.
        windows = lectures * STEPS_PER_LECTURE
        print(f"database: {lectures} lectures, {windows} windows, {args.db.stat().st_size / 2**30:.1f} GiB")

        rng = random.Random(args.seed)
        lecture_ids = [rng.randint(1, lectures) for _ in range(args.samples)]
        first = store.get_lecture(lecture_ids[0])
        with store.engine.connect() as connection:
            plan = connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {_SQLITE_WINDOWS_IN_ROOM}",
                (first.room, _text(first.start), _text(first.end)),
            ).fetchall()
        print("query plan: " + "; ".join(row[-1] for row in plan))
        # The first HTML page imports matplotlib (about a second); a report server pays that once.
        first_windows = store.windows_in_room(first.room, first.start, first.end)
        render_lecture_html(build_report(first, first_windows, zone, 60))
        # As the aggregator command does: full garbage collections then skip the objects of the
        # imported modules, instead of pausing one query in about twenty for 20 to 60 ms.
        gc.freeze()
        if not args.cold:
            # Without --cold every lecture is read once before it is timed, so its pages are cached.
            for lecture_id in lecture_ids:
                lecture = store.get_lecture(lecture_id)
                store.windows_in_room(lecture.room, lecture.start, lecture.end)
        timings: dict[str, list[float]] = {"query": [], "compute": [], "text": [], "html": []}
        rows_per_lecture = []
        for lecture_id in lecture_ids:
            if args.cold:
                drop_from_page_cache(args.db)
            began = time.perf_counter()
            lecture = store.get_lecture(lecture_id)
            rows = store.windows_in_room(lecture.room, lecture.start, lecture.end)
            queried = time.perf_counter()
            report = build_report(lecture, rows, zone, step_s=60)
            computed = time.perf_counter()
            render_text(report)
            texted = time.perf_counter()
            render_lecture_html(report)
            rendered = time.perf_counter()
            rows_per_lecture.append(len(rows))
            timings["query"].append(queried - began)
            timings["compute"].append(computed - queried)
            timings["text"].append(texted - computed)
            timings["html"].append(rendered - texted)
        cache = "page cache dropped before each" if args.cold else "each read once before, so its pages are cached"
        sizes = f"{min(rows_per_lecture)} to {max(rows_per_lecture)} windows each"
        print(f"{len(rows_per_lecture)} lectures, {sizes}, {cache}")
        for name, values in timings.items():
            print(
                f"{name:<8} median {1000 * statistics.median(values):7.1f} ms, "
                f"max {1000 * max(values):7.1f} ms over {len(values)} lectures"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
