"""The database layer: the only module that imports psycopg2. Runs named queries from a pool of autocommit
connections and maps driver errors to comfyq's own."""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

from comfyq.errors import ConstraintViolation, DatabaseError, DatabaseUnavailable
from comfyq.queries import PositionalQuery, load_positional, load_queries

log = logging.getLogger(__name__)

Row = dict[str, Any]
Params = Mapping[str, Any] | None

psycopg2.extensions.register_adapter(dict, psycopg2.extras.Json)


def _map_error(exc: psycopg2.Error) -> DatabaseError:
    """Translate a driver error so callers never catch psycopg2 types."""
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return DatabaseUnavailable(str(exc).strip() or exc.__class__.__name__)
    if isinstance(exc, psycopg2.IntegrityError):
        constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
        return ConstraintViolation(str(exc).strip(), constraint)
    return DatabaseError(str(exc).strip())


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except psycopg2.Error as exc:
        raise _map_error(exc) from exc


def _went_away(conn: psycopg2.extensions.connection) -> bool:
    """True for an idle connection the server has given up: closed here, or its socket readable, which for an
    idle autocommit connection (no LISTEN on pooled ones) means the server sent something unasked: the FATAL
    of a shutdown or a terminated backend, or end of file after a crash. One select(), no round trip; a rare
    unasked notice only costs a reconnect."""
    if conn.closed:
        return True
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class PreparingConnection(psycopg2.extensions.connection):
    """A connection that remembers which named queries it has PREPAREd: a prepared statement lives exactly
    as long as its server session, so the set belongs to the connection, not to the pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()
        self.unpreparable: set[str] = set()


def _statement_gone(exc: psycopg2.Error) -> bool:
    """The server no longer has our prepared statement (DISCARD ALL, a pooler switched sessions), or its
    cached plan refers to a table whose row type a migration changed ("cached plan must not change result
    type"); both are cured by preparing it again."""
    return isinstance(exc, (psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.FeatureNotSupported))


class Database:
    """A thread-safe pool running the project's named queries. Create one per process, after fork.

    With prepare=True (the default) each connection PREPAREs a named query the first time it runs it and
    EXECUTEs it after that: psycopg2 otherwise sends the text every time and Postgres plans the whole CTE
    again, which the benchmarks measured at about 40% of the server's CPU for the queue's hot statements.
    Turn it off behind a pooler that moves sessions between server connections (PgBouncer in transaction
    mode)."""

    def __init__(self, url: str, sql_dir: Path, *, min_size: int = 1, max_size: int = 4,
                 connect_timeout: int = 5, application_name: str = "comfyq", prepare: bool = True) -> None:
        self.url = url
        self.queries = load_queries(sql_dir)
        self.prepare = prepare
        self._positional: dict[str, PositionalQuery] = load_positional(sql_dir) if prepare else {}
        self._execute_sql = {name: f"EXECUTE {_statement_name(name)}"
                             + (f"({', '.join(f'%({p})s' for p in form.params)})" if form.params else "")
                             for name, form in self._positional.items()}
        self._connect_kwargs: dict[str, Any] = {"connect_timeout": connect_timeout,
                                                "application_name": application_name}
        self._min = min_size
        self._max = max_size
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()
        # psycopg2's pool raises when exhausted; callers wait for a free connection instead.
        self._slots = threading.BoundedSemaphore(max_size)

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        # Built lazily so a process can start while the database is still down and recover later.
        with self._lock:
            if self._pool is None:
                with _mapped_errors():
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        self._min, self._max, self.url, connection_factory=PreparingConnection,
                        **self._connect_kwargs)
            return self._pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """An autocommit connection; a broken one is discarded rather than returned to the pool."""
        with self._slots:
            with self._checked_out() as conn:
                yield conn

    def _take(self, pool: psycopg2.pool.ThreadedConnectionPool) -> psycopg2.extensions.connection:
        """A pooled connection that is still open. One the server has closed while it sat idle (a restart, a
        failover, an idle timeout) is discarded here, before anything is sent on it, so the caller's statement
        runs on a live connection without any retry (a write is never sent twice). After at most max_size
        discards the pool is empty and hands out a new connection."""
        for _ in range(self._max + 1):
            with _mapped_errors():
                conn = pool.getconn()
            if not _went_away(conn):
                return conn
            log.info("discarding a pooled connection the server closed", extra={"action": "db_stale_connection"})
            pool.putconn(conn, close=True)
        raise DatabaseUnavailable("every connection the pool handed out was closed by the server")

    @contextlib.contextmanager
    def _checked_out(self) -> Iterator[psycopg2.extensions.connection]:
        pool = self._get_pool()
        conn = self._take(pool)
        broken = False
        try:
            if conn.closed:
                broken = True
                raise DatabaseUnavailable("connection closed")
            conn.autocommit = True
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseUnavailable):
            broken = True
            raise
        finally:
            pool.putconn(conn, close=broken or bool(conn.closed))

    def sql(self, name: str) -> str:
        try:
            return self.queries[name]
        except KeyError:
            raise DatabaseError(f"no query named {name!r} in sql/queries") from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One pooled connection for several statements (advisory locks, transactions)."""
        with self.connection() as conn:
            yield Session(self, conn)

    def fetch_all(self, name: str, params: Params = None) -> list[Row]:
        """Run a named query and return every row as a dict."""
        with self.session() as session:
            return session.fetch_all(name, params)

    def fetch_one(self, name: str, params: Params = None) -> Row | None:
        rows = self.fetch_all(name, params)
        return rows[0] if rows else None

    def execute(self, name: str, params: Params = None) -> int:
        """Run a named statement; returns the affected row count."""
        with self.session() as session:
            return session.execute(name, params)

    def ping(self) -> None:
        """Raises DatabaseUnavailable unless a round trip succeeds."""
        self.execute("ping")

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None

    def listener(self, listen_query: str) -> Listener:
        """A Listener running the named LISTEN statement on its own connection."""
        return Listener(self.url, self.sql(listen_query), self._connect_kwargs)


def _statement_name(query: str) -> str:
    return f"comfyq_{query}"


class Session:
    """Statements on one connection; autocommit unless inside transaction()."""

    def __init__(self, db: Database, conn: psycopg2.extensions.connection) -> None:
        self.db = db
        self.conn = conn

    def fetch_all(self, name: str, params: Params = None) -> list[Row]:
        with _mapped_errors(), self.conn.cursor() as cur:
            self._run(cur, name, params or {})
            if not cur.description:
                return []
            # Tuples zipped with the column names: RealDictCursor's per-cell __setitem__ costs ~8x more on the
            # 10k rows of a batch.
            columns = [column.name for column in cur.description]
            return [dict(zip(columns, row)) for row in cur.fetchall()]

    def fetch_one(self, name: str, params: Params = None) -> Row | None:
        rows = self.fetch_all(name, params)
        return rows[0] if rows else None

    def execute(self, name: str, params: Params = None) -> int:
        with _mapped_errors(), self.conn.cursor() as cur:
            self._run(cur, name, params or {})
            return int(cur.rowcount)

    def _run(self, cur: psycopg2.extensions.cursor, name: str, params: Mapping[str, Any]) -> None:
        """Run a named query, prepared on this connection when it can be (see Database)."""
        if not self._ready(cur, name):
            cur.execute(self.db.sql(name), params)
            return
        try:
            cur.execute(self.db._execute_sql[name], params)
        except psycopg2.Error as exc:
            if not _statement_gone(exc):
                raise
            if not self.conn.autocommit:
                self.conn.prepared.discard(name)  # type: ignore[attr-defined]  # re-prepared outside a transaction
                raise
            # Outside a transaction nothing ran: forget the statement, prepare it afresh, run it once more.
            self._forget(cur, name)
            if not self._ready(cur, name):
                cur.execute(self.db.sql(name), params)
                return
            cur.execute(self.db._execute_sql[name], params)

    def _ready(self, cur: psycopg2.extensions.cursor, name: str) -> bool:
        """True once `name` is prepared on this connection. A PREPARE that fails (the schema is not migrated
        yet) is only tried outside a transaction, where its failure aborts nothing, and once per connection;
        the query then runs as text and reports the real error itself."""
        conn = self.conn
        form = self.db._positional.get(name)
        prepared = getattr(conn, "prepared", None)
        if form is None or prepared is None:
            return False
        if name in prepared:
            return True
        if name in conn.unpreparable or not conn.autocommit:  # type: ignore[attr-defined]
            return False
        try:
            cur.execute(f"PREPARE {_statement_name(name)} AS {form.sql}")
        except psycopg2.errors.DuplicatePreparedStatement:
            pass
        except psycopg2.Error as exc:
            conn.unpreparable.add(name)  # type: ignore[attr-defined]
            log.debug("query %s runs unprepared: %s", name, str(exc).strip(), extra={"action": "db_unprepared"})
            return False
        prepared.add(name)
        return True

    def _forget(self, cur: psycopg2.extensions.cursor, name: str) -> None:
        self.conn.prepared.discard(name)  # type: ignore[attr-defined]
        with contextlib.suppress(psycopg2.errors.InvalidSqlStatementName):
            cur.execute(f"DEALLOCATE {_statement_name(name)}")

    def execute_file(self, sql: str) -> None:
        """Run the text of a SQL file (a migration), which may hold many statements."""
        with _mapped_errors(), self.conn.cursor() as cur:
            cur.execute(sql)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """Everything inside commits together or not at all."""
        with _mapped_errors():
            self.conn.autocommit = False
        try:
            yield self
            with _mapped_errors():
                self.conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                self.conn.rollback()
            raise
        finally:
            with contextlib.suppress(psycopg2.Error):
                self.conn.autocommit = True


class Listener:
    """A dedicated connection that LISTENs on a channel; wait() returns early when a notification arrives."""

    def __init__(self, url: str, listen_sql: str, connect_kwargs: Mapping[str, Any]) -> None:
        self.url = url
        self.listen_sql = listen_sql
        self._connect_kwargs = dict(connect_kwargs)
        self._conn: psycopg2.extensions.connection | None = None

    def _connect(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            with _mapped_errors():
                conn = psycopg2.connect(self.url, **self._connect_kwargs)
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(self.listen_sql)
            self._conn = conn
        return self._conn

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        """Block up to timeout seconds; True when woken by a notification. The timeout is the poll fallback;
        a byte on any of wake_fds (a signal handler's pipe) ends the wait early."""
        try:
            conn = self._connect()
            if conn.notifies:
                conn.notifies.clear()
                return True
            ready, _, _ = select.select([conn, *wake_fds], [], [], max(0.0, timeout))
            if conn not in ready:
                return False
            with _mapped_errors():
                conn.poll()
            woke = bool(conn.notifies)
            conn.notifies.clear()
            return woke
        except DatabaseUnavailable:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None


def connect_once(url: str, connect_timeout: int = 5) -> psycopg2.extensions.connection:
    """A single autocommit connection, for admin tasks (creating test databases)."""
    with _mapped_errors():
        conn = psycopg2.connect(url, connect_timeout=connect_timeout)
        conn.autocommit = True
        return conn
