"""The journal in a PostgreSQL database (psycopg 3): the SQLite store's contract, shared by many hosts.

Tables mirror :mod:`deploystate.sqlite_store`'s: ``records``, ``rollouts`` (each rollout's last
sequence number and latest summary, written by the statement that appends the records they
describe), ``environment_records`` and ``deliveries``; plus ``deploystate_schema``, one row holding
the schema version.  Record data and summaries are kept as the same JSON text SQLite keeps, so a
reader gets back exactly what was written.

Every write is ONE statement (a data-modifying ``WITH``), on a connection in autocommit mode, so
one append is one round trip and one transaction, and durable once it returns:

- a rollout's append updates its ``rollouts`` row only ``WHERE last_seq = expected``; a concurrent
  append to the same rollout waits for that row's lock and then finds ``last_seq`` moved, so it
  writes nothing and is a :class:`JournalConflict`.  A new rollout is an ``INSERT ... ON CONFLICT
  DO NOTHING`` of its row: of two racing, exactly one inserts.  The records' primary key
  ``(rollout_id, seq)`` backs that up: a clash there means the tables disagree (JournalCorrupt);
- an environment's append inserts its records only if the environment's last record is the one
  expected; of two racing for the same next number, the primary key lets one in and the other's
  unique violation becomes the conflict.

The runner lock (:meth:`PostgresStore.hold`) is a session-level advisory lock
(``pg_try_advisory_lock``) on a 64-bit hash of the schema and the rollout id, taken on a
connection of its own kept open while held: the server releases it when that connection ends,
so also when its process is killed (``kill -9``: the kernel closes the socket) or, for a host that
vanished, when the server's TCP keep-alive gives up on it (set to about a minute on that
connection).  A process that loses that connection while holding loses the lock with it.

The schema is made on first use (under a transaction-level advisory lock, so two processes
starting on an empty database make it once).  A database whose schema version is newer than
this code's, or that holds tables of these names without ``deploystate_schema`` (another
program's), is refused and left as it is.

The password never comes from the URL (see :mod:`deploystate_backends.postgres.url`), and every
message is scrubbed of it in case a server or libpq quotes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from deploystate.journal import (
    Entry,
    JournalCorrupt,
    JournalError,
    JournalReadOnly,
    ProblemList,
    Record,
    Summary,
    beyond_last,
    busy,
    check_delivery,
    check_environment_name,
    check_rollout_id,
    conflict,
    env_conflict,
    json_object,
    summary_text,
    unknown,
)
from deploystate_backends.postgres.url import Target, parse

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
# Serialises making the schema in one database (a transaction-level advisory lock): "dsjl" schema.
_SCHEMA_LOCK = 0x64736A6C_00000001
CONNECT_TIMEOUT_S = 10

_TABLES = ("records", "rollouts", "environment_records", "environment_summaries", "deliveries")
_SCHEMA = [
    # One row: the version of this schema (refused when newer than SCHEMA_VERSION).
    "CREATE TABLE deploystate_schema (only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), "
    "version INTEGER NOT NULL)",
    # COLLATE "C": ids compare by bytes, so listings sort as Python sorts them, whatever the
    # database's locale.
    """CREATE TABLE records (
        rollout_id TEXT COLLATE "C" NOT NULL,
        seq INTEGER NOT NULL,
        action TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        step TEXT,
        data TEXT NOT NULL,
        PRIMARY KEY (rollout_id, seq))""",
    # summary_seq: the record the summary describes; stale when it is not last_seq (or NULL).
    """CREATE TABLE rollouts (
        rollout_id TEXT COLLATE "C" PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        summary_seq INTEGER,
        summary TEXT)""",
    """CREATE TABLE environment_records (
        environment TEXT COLLATE "C" NOT NULL,
        seq INTEGER NOT NULL,
        action TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        step TEXT,
        data TEXT NOT NULL,
        PRIMARY KEY (environment, seq))""",
    # Each environment's summary (its journal replayed up to record seq), written by its append.
    """CREATE TABLE environment_summaries (
        environment TEXT COLLATE "C" PRIMARY KEY,
        seq INTEGER NOT NULL,
        summary TEXT NOT NULL)""",
    """CREATE TABLE deliveries (
        rollout_id TEXT COLLATE "C" NOT NULL,
        notifier TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, notifier))""",
]
_COLUMNS = "rollout_id, seq, action, at, actor, step, data"
_ENV_COLUMNS = "environment, seq, action, at, actor, step, data"

# The new records as arrays, one element per record (one statement whatever their number).
_NEW_ROWS = ("unnest(%(actions)s::text[], %(ats)s::float8[], %(actors)s::text[], %(steps)s::text[], "
             "%(datas)s::text[]) WITH ORDINALITY AS n(action, at, actor, step, data, i)")

# A rollout that exists: move last_seq from the expected record, then add the records, or nothing.
_APPEND = f"""
WITH moved AS (
    UPDATE rollouts SET last_seq = %(last)s,
        summary_seq = CASE WHEN %(summary)s::text IS NULL THEN summary_seq ELSE %(last)s END,
        summary = COALESCE(%(summary)s::text, summary)
    WHERE rollout_id = %(rid)s AND last_seq = %(expected)s
    RETURNING rollout_id),
added AS (
    INSERT INTO records ({_COLUMNS})
    SELECT moved.rollout_id, %(expected)s + n.i, n.action, n.at, n.actor, n.step, n.data
    FROM moved, {_NEW_ROWS}
    RETURNING 1)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM added)
"""

# A new rollout: its row, unless another writer made it first; then its records.
_CREATE = f"""
WITH made AS (
    INSERT INTO rollouts (rollout_id, last_seq, summary_seq, summary)
    VALUES (%(rid)s, %(last)s, CASE WHEN %(summary)s::text IS NULL THEN NULL ELSE %(last)s END,
            %(summary)s::text)
    ON CONFLICT (rollout_id) DO NOTHING
    RETURNING rollout_id),
added AS (
    INSERT INTO records ({_COLUMNS})
    SELECT made.rollout_id, n.i, n.action, n.at, n.actor, n.step, n.data
    FROM made, {_NEW_ROWS}
    RETURNING 1)
SELECT (SELECT count(*) FROM made), (SELECT count(*) FROM added)
"""

_ENV_APPEND = f"""
WITH last AS (SELECT COALESCE(MAX(seq), 0) AS seq FROM environment_records WHERE environment = %(name)s),
added AS (
    INSERT INTO environment_records ({_ENV_COLUMNS})
    SELECT %(name)s, %(expected)s + n.i, n.action, n.at, n.actor, n.step, n.data
    FROM last, {_NEW_ROWS}
    WHERE last.seq = %(expected)s
    RETURNING 1),
kept AS (
    INSERT INTO environment_summaries (environment, seq, summary)
    SELECT %(name)s, %(expected)s + %(count)s, %(summary)s::text FROM last
    WHERE last.seq = %(expected)s AND %(summary)s::text IS NOT NULL AND %(count)s > 0
    ON CONFLICT (environment) DO UPDATE SET seq = excluded.seq, summary = excluded.summary
    RETURNING 1)
SELECT (SELECT seq FROM last), (SELECT count(*) FROM added), (SELECT count(*) FROM kept)
"""

# The rollout's last record and its records after ``after`` in one statement: no row means no
# rollout, one row of NULLs means nothing new.
_READ = """
SELECT r.rollout_id, r.seq, r.action, r.at, r.actor, r.step, r.data
FROM rollouts o LEFT JOIN records r ON r.rollout_id = o.rollout_id AND r.seq > %(after)s
WHERE o.rollout_id = %(rid)s ORDER BY r.seq
"""

_SET_DELIVERED = """
WITH o AS (SELECT last_seq FROM rollouts WHERE rollout_id = %(rid)s),
kept AS (
    INSERT INTO deliveries (rollout_id, notifier, seq)
    SELECT %(rid)s, %(notifier)s, %(seq)s FROM o WHERE %(seq)s <= o.last_seq AND %(seq)s > 0
    ON CONFLICT (rollout_id, notifier) DO UPDATE SET seq = GREATEST(deliveries.seq, excluded.seq)
    RETURNING 1)
SELECT (SELECT last_seq FROM o), (SELECT count(*) FROM kept)
"""

_Row = tuple[str, int, str, float, str, "str | None", str]


def lock_key(schema: str, rollout_id: str) -> int:
    """The advisory lock key of ``rollout_id`` in ``schema``: a stable signed 64-bit hash (the same
    in every process and every Python, unlike ``hash()``)."""
    digest = hashlib.blake2b(f"deploystate:{schema}:{rollout_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _driver() -> Any:
    try:
        import psycopg
    except ImportError as error:
        raise JournalError(f"a PostgreSQL journal needs psycopg 3 ({error}); install it: "
                           "pip install 'deploystate[postgres]'") from None
    return psycopg


class PostgresStore:
    """A journal in a PostgreSQL database.  Implements :class:`deploystate.ports.Store`.

    ``url``: ``postgresql://USER@HOST:PORT/DB`` (libpq's URL, with ``password_env=NAME`` naming
    the variable holding the password; see :mod:`deploystate_backends.postgres.url`).
    ``create``: make the schema in an empty database (else an empty database is "no journal").
    ``round_trips`` counts the statements sent to the server (a benchmark's figure).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._target: Target = parse(url)
        self.path = self._target.shown  # what messages call this journal (as SQLiteStore.path)
        self.round_trips = 0
        self._lock = threading.Lock()
        self._closed = False
        self._held: set[str] = set()
        self._lock_db: psycopg.Connection[Any] | None = None
        self._db = self._connect()
        try:
            self._schema = self._open(create)
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.path!r})"

    # -- connecting and opening -------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        pg = _driver()
        extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "deploystate"}
        if self._target.password is not None:
            extra["password"] = self._target.password
        try:
            connection: psycopg.Connection[Any] = pg.connect(self._target.conninfo, autocommit=True,
                                                             **extra)
        except pg.OperationalError as error:
            said = self._said(error)
            if "password" in said.lower() or "authentication" in said.lower():
                raise JournalError(
                    f"PostgreSQL at {self._target.where} refused the login ({said}); nothing was written. "
                    "Give the password in PGPASSWORD (or PGPASSFILE, PGSERVICE) or the variable named by "
                    "password_env in the store URL") from None
            if "does not exist" in said:
                raise JournalError(f"PostgreSQL at {self._target.where}: {said}; create it (createdb) or "
                                   "fix store; nothing was written") from None
            raise JournalError(f"cannot reach PostgreSQL at {self._target.where} ({said}): start it or fix "
                               "store; nothing was written") from None
        return connection

    def _said(self, error: BaseException) -> str:
        """What the server or libpq said, on one line, without the password (the server's own
        sentence, not the statement it quotes after it)."""
        diag = getattr(error, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        text = " ".join(str(primary or error).split()) or type(error).__name__
        return self._target.scrub(text)

    def _open(self, create: bool) -> str:
        """Check (or make) the schema; returns the schema name the tables live in."""
        pg = _driver()
        where = self._target.where
        try:
            version, schema = self._db.execute(
                "SELECT version, current_schema() FROM deploystate_schema").fetchone() or (None, None)
        except pg.errors.UndefinedTable:
            version, schema = None, None
        except pg.Error as error:
            self._fail(error)
        self.round_trips += 1
        if version is None:
            if not create:
                raise JournalError(f"no journal in PostgreSQL database {where} (it has no deploystate "
                                   "tables); start a rollout first ('deploystate start VERSION') or point "
                                   "--store (or [deploystate] store) at the database that holds it")
            version, schema = self._create()
        if version > SCHEMA_VERSION:
            raise JournalCorrupt(f"PostgreSQL database {where} has journal schema {version}, newer than "
                                 f"schema {SCHEMA_VERSION} that this deploystate reads; it was not changed. "
                                 "Use a deploystate at least as new as the one that wrote it")
        if version < 1:
            raise JournalCorrupt(f"PostgreSQL database {where} has journal schema {version}, which no "
                                 f"deploystate wrote (this one reads 1 to {SCHEMA_VERSION}); it was not "
                                 "changed")
        return str(schema)

    def _create(self) -> tuple[int, str]:
        pg = _driver()
        db = self._db
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                made = db.execute("SELECT to_regclass('deploystate_schema') IS NOT NULL, current_schema(), "
                                  "array(SELECT tablename::text FROM pg_tables "
                                  "WHERE schemaname = current_schema() AND tablename = ANY(%s))",
                                  (list(_TABLES),)).fetchone()
                assert made is not None
                exists, schema, clashing = made
                if schema is None:
                    raise JournalError(f"PostgreSQL database {self._target.where}: no schema to make the "
                                       "journal in (search_path names none that exists); fix the search_path "
                                       "or create the schema; nothing was written")
                if exists:  # another process made it meanwhile
                    row = db.execute("SELECT version FROM deploystate_schema").fetchone()
                    return (int(row[0]) if row else 0), str(schema)
                if clashing:
                    raise JournalCorrupt(
                        f"PostgreSQL database {self._target.where} is not a deploystate journal (schema "
                        f"{schema} has table {', '.join(sorted(clashing))} but no deploystate_schema); it "
                        "was not changed. Point --store at another database, or at another schema "
                        "(?options=-csearch_path%3DNAME)")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO deploystate_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        except pg.Error as error:
            self._fail(error)
        finally:
            self.round_trips += 4
        return SCHEMA_VERSION, str(schema)

    # -- errors -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, writing: bool) -> Iterator[psycopg.Connection[Any]]:
        """The connection (opened again if the last one broke), and the driver's errors as journal
        errors saying what to do, never a traceback."""
        pg = _driver()
        if self._closed:
            raise JournalError(f"journal {self.path} is closed; open it again")
        if self._db.broken or self._db.closed:
            self._db = self._connect()
        try:
            yield self._db
        except pg.Error as error:
            self._fail(error, writing=writing)

    def _fail(self, error: BaseException, *, writing: bool = False) -> NoReturn:
        pg = _driver()
        errors = pg.errors
        where, said = self._target.where, self._said(error)
        if isinstance(error, errors.ReadOnlySqlTransaction):
            raise JournalReadOnly(f"PostgreSQL at {where} takes no writes ({said}): a standby, or "
                                  "default_transaction_read_only; nothing was written. Point store at the "
                                  "primary") from None
        if isinstance(error, errors.InsufficientPrivilege):
            raise JournalReadOnly(f"PostgreSQL at {where} refused this ({said}); nothing was written. Grant "
                                  "the role what the journal needs: CREATE on the schema for the first "
                                  "'deploystate start' (which makes the tables), then SELECT, INSERT and "
                                  "UPDATE on its tables") from None
        if isinstance(error, errors.DiskFull):
            raise JournalError(f"the disk of PostgreSQL at {where} is full ({said}); nothing was written for "
                               "this step; free space and run again") from None
        if isinstance(error, errors.IntegrityError):
            raise JournalCorrupt(f"PostgreSQL database {where} is inconsistent ({said}): its rollouts table "
                                 "disagrees with its records; nothing was written. Run 'deploystate "
                                 "check-store'") from None
        if isinstance(error, errors.UndefinedTable | errors.UndefinedColumn):
            raise JournalCorrupt(f"PostgreSQL database {where} is a damaged journal ({said}); restore it "
                                 "from a backup") from None
        if isinstance(error, pg.OperationalError):
            fate = ("whether this last write was kept is unknown (the journal says: read it again)"
                    if writing else "nothing was written")
            raise JournalError(f"lost PostgreSQL at {where} ({said}): {fate}; check the server and run "
                               "again") from None
        raise JournalError(f"cannot use PostgreSQL journal {where}: {said}") from None

    # -- the Store protocol -------------------------------------------------------------------------
    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry],
               summary: Mapping[str, Any] | None = None) -> list[Record]:
        """See :meth:`deploystate.ports.Store.append`: one statement (see the module's docstring)."""
        check_rollout_id(rollout_id)
        text = None if summary is None else summary_text(summary)
        datas = [json.dumps(e.data, sort_keys=True, allow_nan=False) for e in entries]
        if not entries and expected_seq == 0:
            last = self.last_seq(rollout_id)
            if last != 0:
                raise conflict(rollout_id, 0, last)
            return []  # nothing to append, and no rollout to keep a summary for
        params = {"rid": rollout_id, "expected": expected_seq, "last": expected_seq + len(entries),
                  "summary": text, "actions": [e.action for e in entries], "ats": [e.at for e in entries],
                  "actors": [e.actor for e in entries], "steps": [e.step for e in entries], "datas": datas}
        with self._lock, self._guard(writing=True) as db:
            self.round_trips += 1
            found = db.execute(_CREATE if expected_seq == 0 else _APPEND, params).fetchone()
            if not found or found[0] != 1:
                self.round_trips += 1
                row = db.execute("SELECT last_seq FROM rollouts WHERE rollout_id = %s",
                                 (rollout_id,)).fetchone()
                raise conflict(rollout_id, expected_seq, int(row[0]) if row else 0)
        return [Record(rollout_id, expected_seq + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                for i, e in enumerate(entries)]

    def read(self, rollout_id: str, after: int = 0) -> list[Record]:
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            rows = db.execute(_READ, {"rid": rollout_id, "after": after}).fetchall()
            if not rows:
                raise unknown(rollout_id, self._some_rollouts(db))
        return [self._record(row) for row in rows if row[1] is not None]

    def _some_rollouts(self, db: psycopg.Connection[Any]) -> list[str]:
        """The newest few rollout ids (by name), for an error message."""
        self.round_trips += 1
        return [r[0] for r in db.execute("SELECT rollout_id FROM rollouts ORDER BY rollout_id DESC LIMIT 5")]

    def read_all(self) -> dict[str, list[Record]]:
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            rows = db.execute(f"SELECT {_COLUMNS} FROM records ORDER BY rollout_id, seq").fetchall()
        result: dict[str, list[Record]] = {}
        for row in rows:
            result.setdefault(row[0], []).append(self._record(row))
        return result

    def rollouts(self) -> list[str]:
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            return [r[0] for r in db.execute("SELECT rollout_id FROM rollouts ORDER BY rollout_id")]

    def last_seq(self, rollout_id: str) -> int:
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            found = db.execute("SELECT last_seq FROM rollouts WHERE rollout_id = %s",
                               (rollout_id,)).fetchone()
        return int(found[0]) if found else 0

    def summaries(self) -> dict[str, tuple[int, Summary | None]]:
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            rows = db.execute("SELECT rollout_id, last_seq, summary_seq, summary FROM rollouts").fetchall()
        result: dict[str, tuple[int, Summary | None]] = {}
        for rollout_id, last, summary_seq, text in rows:
            if summary_seq is None or text is None:
                result[rollout_id] = (last, None)
                continue
            data = json_object(text)
            if data is None:
                raise JournalCorrupt(f"{self.path}: the summary of rollout {rollout_id} is damaged (not a "
                                     "JSON object); restore the journal from a backup")
            result[rollout_id] = (last, Summary(summary_seq, data))
        return result

    def _record(self, row: Sequence[Any], of: str = "rollout") -> Record:
        data = json_object(row[6])
        if data is None:
            raise JournalCorrupt(f"{self.path}: record {row[1]} of {of} {row[0]} is damaged (data is not "
                                 "JSON); restore the journal from a backup")
        return Record(row[0], row[1], row[2], row[3], row[4], row[5], data)

    # -- environments and deliveries ----------------------------------------------------------------
    def env_append(self, environment: str, expected_seq: int, entries: Sequence[Entry],
                   summary: Mapping[str, Any] | None = None) -> list[Record]:
        """See :meth:`deploystate.ports.Store.env_append`: one statement (records and summary); a race
        for the same next record is settled by the primary key, and the loser writes nothing."""
        pg = _driver()
        check_environment_name(environment)
        text = None if summary is None else summary_text(summary)
        datas = [json.dumps(e.data, sort_keys=True, allow_nan=False) for e in entries]
        params = {"name": environment, "expected": expected_seq, "summary": text, "count": len(entries),
                  "actions": [e.action for e in entries],
                  "ats": [e.at for e in entries], "actors": [e.actor for e in entries],
                  "steps": [e.step for e in entries], "datas": datas}
        with self._lock, self._guard(writing=True) as db:
            self.round_trips += 1
            try:
                found = db.execute(_ENV_APPEND, params).fetchone()
            except pg.errors.UniqueViolation:
                # Another writer appended the same next record first (and committed meanwhile).
                self.round_trips += 1
                row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM environment_records "
                                 "WHERE environment = %s", (environment,)).fetchone()
                raise env_conflict(environment, expected_seq, int(row[0]) if row else 0) from None
            assert found is not None
            if found[0] != expected_seq:
                raise env_conflict(environment, expected_seq, int(found[0]))
        return [Record(environment, expected_seq + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                for i, e in enumerate(entries)]

    def env_summary(self, environment: str) -> Summary | None:
        """The latest summary kept for ``environment``, or None (none, or unreadable: the reader then
        replays the environment from record 1)."""
        check_environment_name(environment)
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            row = db.execute("SELECT seq, summary FROM environment_summaries WHERE environment = %s",
                             (environment,)).fetchone()
        if row is None:
            return None
        data = json_object(row[1])
        return None if data is None else Summary(int(row[0]), data)

    def env_read(self, environment: str, after: int = 0) -> list[Record]:
        check_environment_name(environment)
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            rows = db.execute(f"SELECT {_ENV_COLUMNS} FROM environment_records WHERE environment = %s AND "
                              "seq > %s ORDER BY seq", (environment, after)).fetchall()
        return [self._record(row, "environment") for row in rows]

    def environments(self) -> list[str]:
        # One index seek per environment (a loose index scan) instead of reading every record.
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            rows = db.execute(
                "WITH RECURSIVE names(name) AS (SELECT MIN(environment) FROM environment_records "
                "UNION ALL SELECT (SELECT MIN(environment) FROM environment_records "
                "WHERE environment > names.name) FROM names WHERE names.name IS NOT NULL) "
                "SELECT name FROM names WHERE name IS NOT NULL").fetchall()
        return [r[0] for r in rows]

    def delivered(self, rollout_id: str) -> dict[str, int]:
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 1
            rows = db.execute("SELECT notifier, seq FROM deliveries WHERE rollout_id = %s",
                              (rollout_id,)).fetchall()
        return {notifier: int(seq) for notifier, seq in rows}

    def set_delivered(self, rollout_id: str, notifier: str, seq: int) -> None:
        """See :meth:`deploystate.ports.Store.set_delivered`: one statement, never backwards."""
        check_delivery(rollout_id, notifier, seq)
        with self._lock, self._guard(writing=True) as db:
            self.round_trips += 1
            found = db.execute(_SET_DELIVERED, {"rid": rollout_id, "notifier": notifier,
                                                "seq": seq}).fetchone()
            if found is None or found[0] is None:
                raise unknown(rollout_id, self._some_rollouts(db))
        if seq > found[0]:
            raise beyond_last(rollout_id, notifier, seq, int(found[0]))

    # -- the runner lock ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, rollout_id: str) -> Iterator[None]:
        """See :meth:`deploystate.ports.Store.hold`: an advisory lock on a connection of its own
        (see the module's docstring).  One statement to take, one to release."""
        check_rollout_id(rollout_id)
        pg = _driver()
        key = lock_key(self._schema, rollout_id)
        with self._lock:
            if self._closed:
                raise JournalError(f"journal {self.path} is closed; open it again")
            # A session's advisory locks stack: a second hold through this store's one lock
            # connection would be granted, so this store's own holds are kept here.
            if rollout_id in self._held:
                raise busy(rollout_id)
            try:
                locks = self._lock_connection()
                self.round_trips += 1
                taken = locks.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except pg.Error as error:
                self._fail(error)
            if not taken or not taken[0]:
                raise busy(rollout_id)
            self._held.add(rollout_id)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(rollout_id)
                with contextlib.suppress(pg.Error):  # a lost connection has released it already
                    self.round_trips += 1
                    locks.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _lock_connection(self) -> psycopg.Connection[Any]:
        """This store's connection for runner locks (opened when first needed, kept while open)."""
        if self._lock_db is None or self._lock_db.broken or self._lock_db.closed:
            if self._held:  # its locks went with it: never take new ones silently over lost ones
                raise JournalError(f"lost the connection holding rollout {', '.join(sorted(self._held))} "
                                   f"at PostgreSQL {self._target.where}; stop and run again")
            connection = self._connect()
            # A host that vanishes (no FIN) keeps its locks until the server gives up on the socket:
            # about a minute, not the kernel's default two hours (ignored over a unix socket).
            self.round_trips += 1
            connection.execute("SELECT set_config('tcp_keepalives_idle', '30', false), "
                               "set_config('tcp_keepalives_interval', '10', false), "
                               "set_config('tcp_keepalives_count', '3', false)")
            self._lock_db = connection
        return self._lock_db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
            if self._lock_db is not None:
                self._lock_db.close()  # releases every lock still held through it

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the full check -----------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Check the whole journal (``deploystate check-store``); the problems found, one sentence
        each (empty: all fine).  One consistent snapshot (a read-only repeatable-read transaction:
        runners may go on appending), nothing written.  What SQLiteStore.check reports except
        SQLite's own page check (the server keeps its pages): gaps in the numbering of rollouts'
        and environments' records, disagreement between ``rollouts`` and the records, delivery
        positions naming no record, environment summaries describing no record, data or summaries that
        are not JSON objects."""
        problems: list[str] = []
        with self._lock, self._guard(writing=False) as db:
            self.round_trips += 10
            with db.transaction():
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                self._check_gaps(db, problems, "records", "rollout_id", "rollout")
                self._check_gaps(db, problems, "environment_records", "environment", "environment")
                self._check_rollouts_table(db, problems)
                self._check_deliveries(db, problems)
                self._check_environment_summaries(db, problems)
                self._check_json(db, problems)
        return problems

    def _check_gaps(self, db: psycopg.Connection[Any], problems: list[str], table: str, key: str,
                    kind: str) -> None:
        listed = ProblemList(problems, f"{kind}s with gaps in their records")
        for name, count, first, last, gap in db.execute(
                f"SELECT {key}, COUNT(*), MIN(seq), MAX(seq), "
                f"(SELECT MIN(r.seq) + 1 FROM {table} r WHERE r.{key} = g.{key} AND r.seq < MAX(g.seq) "
                f"AND NOT EXISTS (SELECT 1 FROM {table} n WHERE n.{key} = r.{key} AND n.seq = r.seq + 1)) "
                f"FROM {table} g GROUP BY {key} HAVING MIN(seq) != 1 OR COUNT(*) != MAX(seq) ORDER BY {key}"):
            missing = 1 if first != 1 else gap
            where = f"record {missing} is missing" if missing is not None else "records are numbered wrongly"
            listed.add(f"{kind} {name}: {where} ({count} records numbered {first} to {last})")
        listed.close()

    def _check_rollouts_table(self, db: psycopg.Connection[Any], problems: list[str]) -> None:
        listed = ProblemList(problems, "disagreements between the rollouts table and the records")
        for rollout_id, listed_last, actual in db.execute(
                "SELECT o.rollout_id, o.last_seq, r.actual FROM rollouts o LEFT JOIN "
                "(SELECT rollout_id, MAX(seq) AS actual FROM records GROUP BY rollout_id) r "
                "ON r.rollout_id = o.rollout_id WHERE r.actual IS DISTINCT FROM o.last_seq ORDER BY 1"):
            listed.add(f"rollout {rollout_id} is listed (last record {listed_last}) but has no records"
                       if actual is None else
                       f"rollout {rollout_id} is listed with last record {listed_last}, its last record is "
                       f"{actual}")
        for rollout_id, last in db.execute(
                "SELECT rollout_id, MAX(seq) FROM records r WHERE NOT EXISTS (SELECT 1 FROM rollouts o "
                "WHERE o.rollout_id = r.rollout_id) GROUP BY rollout_id ORDER BY 1"):
            listed.add(f"rollout {rollout_id} has records (up to {last}) but is not in the rollouts table")
        for rollout_id, summary_seq, last in db.execute(
                "SELECT rollout_id, summary_seq, last_seq FROM rollouts WHERE summary_seq > last_seq "
                "OR summary_seq < 1 OR (summary_seq IS NULL) != (summary IS NULL) ORDER BY 1"):
            listed.add(f"rollout {rollout_id}: its summary describes record {summary_seq}, its last record "
                       f"is {last}" if summary_seq is not None else
                       f"rollout {rollout_id}: a summary without the record it describes")
        listed.close()

    def _check_deliveries(self, db: psycopg.Connection[Any], problems: list[str]) -> None:
        listed = ProblemList(problems, "delivery positions that name no record")
        for rollout_id, notifier, seq, last in db.execute(
                "SELECT d.rollout_id, d.notifier, d.seq, o.last_seq FROM deliveries d "
                "LEFT JOIN rollouts o ON o.rollout_id = d.rollout_id "
                "WHERE o.last_seq IS NULL OR d.seq > o.last_seq OR d.seq < 1 ORDER BY 1, 2"):
            if last is None:
                listed.add(f"rollout {rollout_id}: notifier {notifier} is at record {seq}, but the "
                           "rollout is not in the journal")
            elif seq < 1:
                listed.add(f"rollout {rollout_id}: notifier {notifier} is at record {seq}, which no "
                           "record has")
            else:
                listed.add(f"rollout {rollout_id}: notifier {notifier} is at record {seq}, beyond its last "
                           f"record {last}")
        listed.close()

    def _check_json(self, db: psycopg.Connection[Any], problems: list[str]) -> None:
        listed = ProblemList(problems, "records or summaries that are not JSON objects")
        for rollout_id, seq, data in db.execute("SELECT rollout_id, seq, data FROM records ORDER BY 1, 2"):
            if json_object(data) is None:
                listed.add(f"rollout {rollout_id}: record {seq}'s data is not a JSON object")
        for environment, seq, data in db.execute(
                "SELECT environment, seq, data FROM environment_records ORDER BY 1, 2"):
            if json_object(data) is None:
                listed.add(f"environment {environment}: record {seq}'s data is not a JSON object")
        for rollout_id, text in db.execute(
                "SELECT rollout_id, summary FROM rollouts WHERE summary IS NOT NULL ORDER BY 1"):
            if json_object(text) is None:
                listed.add(f"rollout {rollout_id}: its summary is not a JSON object")
        for environment, text in db.execute(
                "SELECT environment, summary FROM environment_summaries ORDER BY 1"):
            if json_object(text) is None:
                listed.add(f"environment {environment}: its summary is not a JSON object")
        listed.close()

    def _check_environment_summaries(self, db: psycopg.Connection[Any], problems: list[str]) -> None:
        listed = ProblemList(problems, "environment summaries that describe no record")
        for environment, seq, last in db.execute(
                "SELECT s.environment, s.seq, e.last FROM environment_summaries s LEFT JOIN "
                "(SELECT environment, MAX(seq) AS last FROM environment_records GROUP BY environment) e "
                "ON e.environment = s.environment WHERE e.last IS NULL OR s.seq > e.last OR s.seq < 1 "
                "ORDER BY 1"):
            listed.add(f"environment {environment}: its summary describes record {seq}, its last record is "
                       f"{last or 0}")
        listed.close()




