"""Benchmark: one lecture's report on a simulated semester in SQLite.

The semester has ROOMS rooms with one device each and WEEKS weeks. Each room has 30
lectures a week: 6 a day from Monday to Friday, 90 minutes each with 10 minute breaks,
from 08:00 UTC. Each device sends one 10 s window for every 10 s of every lecture. Rows are generated
inside SQLite with recursive CTEs, so generating the full semester (58 million windows)
takes minutes, not hours. The database is kept for later runs with --keep.

    python bench/aggregator_report.py --rooms 200 --weeks 18 --db /var/tmp/semester.db

It then times, for --samples lectures picked at random: the query (lecture and its
windows), the report computation, the text rendering and the HTML page.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import text  # noqa: E402

from aggregator.html_report import render_lecture_html  # noqa: E402
from aggregator.report import build_report  # noqa: E402
from aggregator.store import Store  # noqa: E402
from aggregator.text_report import render_text  # noqa: E402
from aggregator.times import Zone  # noqa: E402

LECTURES_PER_WEEK = 30
LECTURES_PER_DAY = 6
LECTURE_MIN = 90
SLOT_MIN = 100
WINDOW_S = 10
SEMESTER_START = "2026-03-02 08:00:00"

LECTURES_SQL = f"""
WITH RECURSIVE
  room(r) AS (SELECT 0 UNION ALL SELECT r + 1 FROM room WHERE r < :rooms - 1),
  slot(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM slot WHERE k < :weeks * {LECTURES_PER_WEEK} - 1),
  lecture(r, k, start) AS (
    SELECT r, k, datetime('{SEMESTER_START}',
      '+' || ((k / {LECTURES_PER_WEEK}) * 7 + (k % {LECTURES_PER_WEEK}) / {LECTURES_PER_DAY}) || ' days',
      '+' || ((k % {LECTURES_PER_DAY}) * {SLOT_MIN}) || ' minutes')
    FROM room, slot)
INSERT INTO lectures (room, title, start, "end", course, source)
SELECT printf('R%03d', r), printf('Course %d', k % {LECTURES_PER_WEEK}),
       start || '.000000', datetime(start, '+{LECTURE_MIN} minutes') || '.000000',
       printf('R%03d-C%d', r, k % {LECTURES_PER_WEEK}), 'manual'
FROM lecture
"""

WINDOWS_SQL = f"""
WITH RECURSIVE step(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM step WHERE i < {LECTURE_MIN * 60 // WINDOW_S} - 1)
INSERT INTO windows (device_id, room, window_start, window_end, frames_sampled, faces_seen, min_faces,
                     suppressed, counts, received_at)
SELECT 'pi-' || l.room, l.room,
       strftime('%Y-%m-%d %H:%M:%S', l.start, '+' || (i * {WINDOW_S}) || ' seconds') || '.000000',
       strftime('%Y-%m-%d %H:%M:%S', l.start, '+' || (i * {WINDOW_S} + {WINDOW_S}) || ' seconds') || '.000000',
       20, 400, 5, (i % 50 = 7),
       CASE WHEN i % 50 = 7 THEN NULL ELSE
         '{{"angry":' || (i % 4) || ',"disgust":0,"fear":' || (i % 3) || ',"happy":' || (40 + i % 17) ||
         ',"sad":' || (10 + i % 5) || ',"surprise":' || (i % 6) || ',"neutral":' ||
         (400 - (i % 4) - (i % 3) - (40 + i % 17) - (10 + i % 5) - (i % 6)) || '}}' END,
       strftime('%Y-%m-%d %H:%M:%S', l.start, '+' || (i * {WINDOW_S} + {WINDOW_S} + 1) || ' seconds') || '.000000'
FROM lectures AS l CROSS JOIN step
WHERE l.id BETWEEN :first AND :last
"""


def generate(store: Store, rooms: int, weeks: int) -> None:
    began = time.perf_counter()
    with store.engine.begin() as connection:
        connection.exec_driver_sql(LECTURES_SQL, {"rooms": rooms, "weeks": weeks})
        last_id = connection.execute(text("SELECT max(id) FROM lectures")).scalar_one()
    # Chunks of 2000 lectures (about 1 million windows) keep each transaction's WAL small.
    for first in range(1, last_id + 1, 2000):
        with store.engine.begin() as connection:
            connection.exec_driver_sql(WINDOWS_SQL, {"first": first, "last": first + 1999})
        done = min(first + 1999, last_id)
        print(f"  {done} of {last_id} lectures, {time.perf_counter() - began:.0f} s", flush=True)
    print(f"generated {last_id} lectures in {time.perf_counter() - began:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--weeks", type=int, default=18)
    parser.add_argument("--db", type=Path, required=True, help="SQLite file; generated when it has no lectures")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument(
        "--sample-up-to-id",
        type=int,
        default=None,
        help="pick lectures with ids up to this one, for timing a database whose generation still runs",
    )
    args = parser.parse_args()

    zone = Zone("Europe/Berlin", __import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    # An existing database is not migrated, so timing can run while another process still generates it.
    with Store.open(f"sqlite:///{args.db}", upgrade=not args.db.exists()) as store:
        with store.engine.connect() as connection:
            lectures = connection.execute(text("SELECT count(*) FROM lectures")).scalar_one()
        if lectures == 0:
            generate(store, args.rooms, args.weeks)
        with store.engine.connect() as connection:
            lectures = connection.execute(text("SELECT count(*) FROM lectures")).scalar_one()
            windows = connection.execute(text("SELECT max(id) FROM windows")).scalar_one()
        print(f"database: {lectures} lectures, {windows} windows, {args.db.stat().st_size / 2**30:.1f} GiB")

        rng = random.Random(5)
        timings: dict[str, list[float]] = {"query": [], "compute": [], "text": [], "html": []}
        for _ in range(args.samples):
            lecture_id = rng.randint(1, args.sample_up_to_id or lectures)
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
            timings["query"].append(queried - began)
            timings["compute"].append(computed - queried)
            timings["text"].append(texted - computed)
            timings["html"].append(rendered - texted)
        for name, values in timings.items():
            print(
                f"{name:<8} median {1000 * statistics.median(values):7.1f} ms, "
                f"max {1000 * max(values):7.1f} ms over {len(values)} lectures"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
