"""The database layer: the only module that imports psycopg2. Runs named queries from a pool of autocommit
connections and maps driver errors to comfyq's own.

Two promises about failures:
- A server that sends nothing back for a connection's io_timeout (hung, SIGSTOPped, a host gone without a
  reset) fails the call with DatabaseUnavailable instead of blocking it for ever: psycopg2 runs in "green mode"
  (a wait callback, `_wait`) that waits on the socket with a deadline. The kernel keeps ACKing for a stopped
  server, so no TCP timeout would ever fire.
- When the connection is lost after a statement that may write was sent in autocommit, or during a COMMIT, the
  call raises OutcomeUnknown: the write may have committed. Failing to get or open a connection, a lost read,
  and a lost statement inside an open transaction (the server rolls it back) are plain DatabaseUnavailable."""

from __future__ import annotations

import contextlib
import logging
import math
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

from comfyq.errors import ConstraintViolation, DatabaseError, DatabaseUnavailable, OutcomeUnknown
from comfyq.queries import PositionalQuery, load_positional, load_queries, may_write

log = logging.getLogger(__name__)

Row = dict[str, Any]
Params = Mapping[str, Any] | None

psycopg2.extensions.register_adapter(dict, psycopg2.extras.Json)


DEFAULT_IO_TIMEOUT = 10.0  # seconds; COMFYQ_DB_IO_TIMEOUT_SECONDS sets it for the processes comfyq starts


class ServerSilent(psycopg2.OperationalError):  # type: ignore[misc]  # psycopg2 ships no stubs
    """Raised by the wait callback when the server sent nothing back within the connection's io_timeout (or did
    not finish the connection handshake within its connect timeout). psycopg2 then closes the connection."""


def _wait(conn: psycopg2.extensions.connection) -> None:
    """psycopg2's wait callback, set for the whole process below: psycopg2.extras.wait_select with a deadline.
    Each wait for the socket lasts at most the connection's io_timeout (None: for ever), so a slow answer that
    keeps arriving is fine and a silent server is not; while connecting, the whole handshake has to finish
    before connect_deadline, since libpq's own connect_timeout does not apply to the non-blocking connect that
    green mode uses. Connections made elsewhere carry neither attribute and wait for ever, as without it.
    poll() rather than select(): a process with more than 1024 open files is no reason to fail."""
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            events = select.POLLIN
        elif state == psycopg2.extensions.POLL_WRITE:
            events = select.POLLOUT
        else:
            raise psycopg2.OperationalError(f"bad state from poll: {state}")
        deadline: float | None = getattr(conn, "connect_deadline", None)
        timeout: float | None = (getattr(conn, "io_timeout", None) if deadline is None
                                 else max(0.0, deadline - time.monotonic()))
        poller = select.poll()
        poller.register(conn.fileno(), events)
        if not poller.poll(None if timeout is None else math.ceil(timeout * 1000)):
            if deadline is not None:
                raise ServerSilent("the database server did not complete the connection in time (hung?)")
            raise ServerSilent(f"the database server sent nothing back for {timeout:g}s (hung?)")


psycopg2.extensions.set_wait_callback(_wait)


# A lost connection, as a server reports it before it goes: shutdown, crash recovery, starting up.
_CONNECTION_ENDED = frozenset({"57P01", "57P02", "57P03"})


def _lost(conn: psycopg2.extensions.connection, exc: psycopg2.Error) -> bool:
    """True when the error ended the connection rather than the statement: nobody can tell any more what the
    server did with what it was sent. An error the server reported on a live connection (a deadlock, a
    canceled statement) means the statement failed and wrote nothing."""
    if not isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return False
    if conn.closed or isinstance(exc, ServerSilent):
        return True
    code = exc.pgcode
    return code is None or code in _CONNECTION_ENDED or code.startswith("08")


def _map_error(exc: psycopg2.Error, *, outcome_unknown: bool = False) -> DatabaseError:
    """Translate a driver error so callers never catch psycopg2 types."""
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        message = str(exc).strip() or exc.__class__.__name__
        if outcome_unknown:
            return OutcomeUnknown(f"the connection was lost after a write was sent; it may have committed: {message}")
        return DatabaseUnavailable(message)
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


class TimedConnection(psycopg2.extensions.connection):  # type: ignore[misc]
    """A connection that carries its own deadlines for _wait: io_timeout for every wait on the server (None: for
    ever), connect_timeout for the whole handshake."""

    def __init__(self, dsn: str, *args: Any, io_timeout: float | None = None,
                 connect_timeout: float | None = None, **kwargs: Any) -> None:
        # Set before connecting: psycopg2 calls _wait from inside super().__init__ until the handshake is done.
        self.io_timeout = io_timeout
        self.connect_deadline: float | None = (None if connect_timeout is None
                                               else time.monotonic() + connect_timeout)
        super().__init__(dsn, *args, **kwargs)
        self.connect_deadline = None


class PreparingConnection(TimedConnection):
    """A connection that remembers which named queries it has PREPAREd: a prepared statement lives exactly
    as long as its server session, so the set belongs to the connection, not to the pool."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        self.prepared: set[str] = set()
        self.unpreparable: set[str] = set()


def _factory(cls: type[TimedConnection], io_timeout: float | None,
             connect_timeout: float | None) -> Callable[..., TimedConnection]:
    """A connection_factory for psycopg2.connect that hands the deadlines to each new connection."""
    return partial(cls, io_timeout=io_timeout, connect_timeout=connect_timeout)


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
    mode).

    io_timeout: a call whose server sends nothing back for this long fails with DatabaseUnavailable (or
    OutcomeUnknown) and its connection is closed; None waits for ever (migrations, admin tools). It also ends
    statements that are merely slow or wait for a lock that long: session(wait_forever=True) is for those."""

    def __init__(self, url: str, sql_dir: Path, *, min_size: int = 1, max_size: int = 4,
                 connect_timeout: int = 5, application_name: str = "comfyq", prepare: bool = True,
                 io_timeout: float | None = DEFAULT_IO_TIMEOUT) -> None:
        self.url = url
        self.io_timeout = io_timeout
        self.connect_timeout = connect_timeout
        self.queries = load_queries(sql_dir)
        self._writes = {name: may_write(sql) for name, sql in self.queries.items()}
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
                        self._min, self._max, self.url,
                        connection_factory=_factory(PreparingConnection, self.io_timeout, self.connect_timeout),
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

    def may_write(self, name: str) -> bool:
        """False only for a named query that certainly writes nothing (comfyq.queries.may_write)."""
        return self._writes.get(name, True)

    @contextlib.contextmanager
    def session(self, *, wait_forever: bool = False) -> Iterator[Session]:
        """One pooled connection for several statements (advisory locks, transactions). wait_forever lifts the
        io_timeout for this session, for statements that may rightly run or wait silently for long (a
        migration's DDL, its advisory lock)."""
        with self.connection() as conn:
            if not wait_forever:
                yield Session(self, conn)
                return
            conn.io_timeout = None
            try:
                yield Session(self, conn)
            finally:
                conn.io_timeout = self.io_timeout

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
        """A Listener running the named LISTEN statement on its own connection, with the pool's timeouts."""
        return Listener(self.url, self.sql(listen_query), self._connect_kwargs, io_timeout=self.io_timeout)


def _statement_name(query: str) -> str:
    return f"comfyq_{query}"


class Session:
    """Statements on one connection; autocommit unless inside transaction()."""

    def __init__(self, db: Database, conn: psycopg2.extensions.connection) -> None:
        self.db = db
        self.conn = conn
        self._write_sent = False  # the statement under way may write and commits by itself (autocommit)
        self._transaction_writes = False  # a statement of the open transaction may have written

    @contextlib.contextmanager
    def _statement(self) -> Iterator[None]:
        """Maps the driver errors of one statement; OutcomeUnknown when the connection was lost after a write
        that commits by itself was sent (see _send)."""
        self._write_sent = False
        try:
            yield
        except psycopg2.Error as exc:
            raise _map_error(exc, outcome_unknown=self._write_sent and _lost(self.conn, exc)) from exc

    def _send(self, cur: psycopg2.extensions.cursor, name: str | None, sql: str,
              params: Mapping[str, Any] | None) -> None:
        """Send the statement itself (not a PREPARE or DEALLOCATE around it). From here on a lost connection
        leaves a write's outcome unknown when it runs in autocommit; inside transaction() nothing commits
        before the COMMIT, so only that one is unknown."""
        writes = name is None or self.db.may_write(name)
        if self.conn.autocommit:
            self._write_sent = writes and not self.conn.closed
        else:
            self._transaction_writes = self._transaction_writes or writes
        cur.execute(sql, params)

    def fetch_all(self, name: str, params: Params = None) -> list[Row]:
        with self._statement(), self.conn.cursor() as cur:
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
        with self._statement(), self.conn.cursor() as cur:
            self._run(cur, name, params or {})
            return int(cur.rowcount)

    def _run(self, cur: psycopg2.extensions.cursor, name: str, params: Mapping[str, Any]) -> None:
        """Run a named query, prepared on this connection when it can be (see Database)."""
        if not self._ready(cur, name):
            self._send(cur, name, self.db.sql(name), params)
            return
        try:
            self._send(cur, name, self.db._execute_sql[name], params)
        except psycopg2.Error as exc:
            if not _statement_gone(exc):
                raise
            self._write_sent = False  # the server refused the statement: it ran nothing
            if not self.conn.autocommit:
                self.conn.prepared.discard(name)  # re-prepared outside a transaction
                raise
            # Outside a transaction nothing ran: forget the statement, prepare it afresh, run it once more.
            self._forget(cur, name)
            if not self._ready(cur, name):
                self._send(cur, name, self.db.sql(name), params)
                return
            self._send(cur, name, self.db._execute_sql[name], params)

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
        if name in conn.unpreparable or not conn.autocommit:
            return False
        try:
            cur.execute(f"PREPARE {_statement_name(name)} AS {form.sql}")
        except psycopg2.errors.DuplicatePreparedStatement:
            pass
        except psycopg2.Error as exc:
            if _lost(conn, exc):
                raise  # not the query's fault; nothing of it was sent
            conn.unpreparable.add(name)
            log.debug("query %s runs unprepared: %s", name, str(exc).strip(), extra={"action": "db_unprepared"})
            return False
        prepared.add(name)
        return True

    def _forget(self, cur: psycopg2.extensions.cursor, name: str) -> None:
        self.conn.prepared.discard(name)
        with contextlib.suppress(psycopg2.errors.InvalidSqlStatementName):
            cur.execute(f"DEALLOCATE {_statement_name(name)}")

    def execute_file(self, sql: str) -> None:
        """Run the text of a SQL file (a migration), which may hold many statements."""
        with self._statement(), self.conn.cursor() as cur:
            self._send(cur, None, sql, None)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """Everything inside commits together or not at all. A connection lost during the COMMIT of a
        transaction that may have written raises OutcomeUnknown; lost before it, the server rolls back, so
        DatabaseUnavailable."""
        with _mapped_errors():
            self.conn.autocommit = False
        self._transaction_writes = False
        try:
            yield self
            try:
                self.conn.commit()
            except psycopg2.Error as exc:
                unknown = self._transaction_writes and _lost(self.conn, exc)
                raise _map_error(exc, outcome_unknown=unknown) from exc
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                self.conn.rollback()
            raise
        finally:
            with contextlib.suppress(psycopg2.Error):
                self.conn.autocommit = True


class Listener:
    """A dedicated connection that LISTENs on a channel; wait() returns early when a notification arrives."""

    def __init__(self, url: str, listen_sql: str, connect_kwargs: Mapping[str, Any], *,
                 io_timeout: float | None = DEFAULT_IO_TIMEOUT) -> None:
        self.url = url
        self.listen_sql = listen_sql
        self._connect_kwargs = dict(connect_kwargs)
        self._factory = _factory(TimedConnection, io_timeout, self._connect_kwargs.get("connect_timeout"))
        self._conn: psycopg2.extensions.connection | None = None

    def _connect(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            with _mapped_errors():
                conn = psycopg2.connect(self.url, connection_factory=self._factory, **self._connect_kwargs)
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

    def notifications(self, timeout: float, wake_fds: Sequence[int] = ()) -> list[tuple[str, str]]:
        """Block up to timeout seconds; returns the (channel, payload) of every notification that arrived, for
        listeners that need to know which job a notification names (a cancel)."""
        try:
            conn = self._connect()
            if not conn.notifies:
                ready, _, _ = select.select([conn, *wake_fds], [], [], max(0.0, timeout))
                if conn in ready:
                    with _mapped_errors():
                        conn.poll()
            received = [(n.channel, n.payload) for n in conn.notifies]
            conn.notifies.clear()
            return received
        except DatabaseUnavailable:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None


def connect_once(url: str, connect_timeout: int = 5,
                 io_timeout: float | None = None) -> psycopg2.extensions.connection:
    """A single autocommit connection, for admin tasks (creating test databases); it waits for ever for answers
    unless given an io_timeout."""
    with _mapped_errors():
        conn = psycopg2.connect(url, connect_timeout=connect_timeout,
                                connection_factory=_factory(TimedConnection, io_timeout, connect_timeout))
        conn.autocommit = True
        return conn
