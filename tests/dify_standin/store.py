"""State storage for the Dify API stand-in (a test double, not Dify).

Two interchangeable stores with the same tiny interface:

* :class:`MemoryStore` -- dicts in memory (unit/integration tests);
* :class:`PgStore` -- one PostgreSQL table of JSON documents, keyed by
  ``(kind, id)``, used when the stand-in is started with ``--dsn``.
  psycopg2 is imported only then (Debian: ``python3-psycopg2``).
"""

import copy
import json
import threading


class MemoryStore(object):
    def __init__(self):
        self._data = {}
        self._lock = threading.RLock()

    def get(self, kind, key):
        with self._lock:
            doc = self._data.get(kind, {}).get(key)
            return copy.deepcopy(doc)

    def put(self, kind, key, doc):
        with self._lock:
            self._data.setdefault(kind, {})[key] = copy.deepcopy(doc)

    def delete(self, kind, key):
        with self._lock:
            return self._data.get(kind, {}).pop(key, None) is not None

    def list(self, kind):
        """All documents of a kind, oldest first (insertion order)."""
        with self._lock:
            return [copy.deepcopy(v) for v in self._data.get(kind, {}).values()]

    def reset(self):
        with self._lock:
            self._data.clear()


class PgStore(object):
    """JSON documents in PostgreSQL: table ``dify_standin_docs``."""

    TABLE = "dify_standin_docs"

    def __init__(self, dsn):
        import psycopg2  # only needed with --dsn

        self._psycopg2 = psycopg2
        self._dsn = dsn
        self._lock = threading.RLock()
        self._conn = None
        self._connect()
        with self._cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS %s ("
                " kind text NOT NULL, id text NOT NULL, seq bigserial,"
                " doc text NOT NULL, PRIMARY KEY (kind, id))" % self.TABLE
            )

    def _connect(self):
        self._conn = self._psycopg2.connect(self._dsn)
        self._conn.autocommit = True

    def _cursor(self):
        if self._conn is None or self._conn.closed:
            self._connect()
        return self._conn.cursor()

    def _run(self, sql, args, fetch=None):
        with self._lock:
            for attempt in (1, 2):
                try:
                    with self._cursor() as cur:
                        cur.execute(sql, args)
                        if fetch == "one":
                            return cur.fetchone()
                        if fetch == "all":
                            return cur.fetchall()
                        return cur.rowcount
                except self._psycopg2.OperationalError:
                    # database restarted under us: reconnect once
                    self._conn = None
                    if attempt == 2:
                        raise

    def get(self, kind, key):
        row = self._run("SELECT doc FROM %s WHERE kind=%%s AND id=%%s" % self.TABLE, (kind, key), "one")
        return json.loads(row[0]) if row else None

    def put(self, kind, key, doc):
        self._run(
            "INSERT INTO %s (kind, id, doc) VALUES (%%s, %%s, %%s)"
            " ON CONFLICT (kind, id) DO UPDATE SET doc = EXCLUDED.doc" % self.TABLE,
            (kind, key, json.dumps(doc)),
        )

    def delete(self, kind, key):
        return self._run("DELETE FROM %s WHERE kind=%%s AND id=%%s" % self.TABLE, (kind, key)) > 0

    def list(self, kind):
        rows = self._run("SELECT doc FROM %s WHERE kind=%%s ORDER BY seq" % self.TABLE, (kind,), "all")
        return [json.loads(r[0]) for r in rows]

    def reset(self):
        self._run("DELETE FROM %s" % self.TABLE, ())
