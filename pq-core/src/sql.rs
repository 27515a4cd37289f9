//! Every statement pq runs, rendered once per table from validated, quoted identifiers.
//! Values are always bound parameters; only identifiers are spliced in, here and nowhere else.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, Postgres};

use crate::error::{Error, Result};

/// A table name, validated: its schema, when one is configured or once the connection's
/// current schema has been resolved, and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TableName {
    pub schema: Option<String>,
    pub table: String,
}

impl TableName {
    /// Longest table name: derived names (`<table>_dequeue_idx`) must fit PostgreSQL's 63 bytes.
    pub const MAX_TABLE_LEN: usize = 48;

    pub fn new(schema: Option<&str>, table: &str) -> Result<Self> {
        if let Some(schema) = schema {
            check_identifier("schema", schema, 63)?;
        }
        check_identifier("table", table, Self::MAX_TABLE_LEN)?;
        Ok(Self {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
        })
    }

    /// `"schema"."table"`, or `"table"` before the schema is resolved.
    pub fn qualified(&self) -> String {
        self.qualify(&quote(&self.table))
    }

    /// An object named after the table, `"<table>_<suffix>"`, qualified like the table.
    pub fn qualified_derived(&self, suffix: &str) -> String {
        self.qualify(&self.derived(suffix))
    }

    /// An object named after the table, `"<table>_<suffix>"`, unqualified.
    pub fn derived(&self, suffix: &str) -> String {
        quote(&format!("{}_{suffix}", self.table))
    }

    fn qualify(&self, quoted: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{quoted}", quote(schema)),
            None => quoted.to_owned(),
        }
    }

    /// The NOTIFY channel of this table: short, and distinct for distinct tables.
    pub fn channel(&self) -> String {
        format!("pq_{:016x}", fnv1a(self.qualified().as_bytes()))
    }

    /// The advisory lock that serialises migrations within one schema.
    pub fn migration_lock_key(&self) -> i64 {
        lock_key("migrate", self.schema.as_deref().unwrap_or(""))
    }

    /// A dollar-quote tag that occurs in neither name, to quote function bodies that name
    /// the table: `$$` would end early in a table named `a$$b`.
    pub fn dollar_quote(&self) -> String {
        let names = [self.schema.as_deref().unwrap_or(""), &self.table];
        (0..)
            .map(|n| format!("$pq{n}$"))
            .find(|tag| names.iter().all(|name| !name.contains(tag.as_str())))
            .expect("some tag is free")
    }

    /// The prefix of the settings that held a connection's claim cursors, for migration 0009's
    /// claim function (superseded by `sql/functions/claim.sql`, which keeps none).
    pub fn claim_cursor(&self) -> String {
        format!("pq.claim_{:016x}_", fnv1a(self.qualified().as_bytes()))
    }

    /// The setting that lists, for the rest of a transaction, the parents it ended and has
    /// not settled yet (see `sql/functions/settle.sql`).
    pub fn ended_setting(&self) -> String {
        format!("pq.ended_{:016x}", fnv1a(self.qualified().as_bytes()))
    }

    /// The advisory lock that orders puts and waiting consumers (see
    /// `sql/functions/wait.sql`).
    pub fn wait_lock_key(&self) -> i64 {
        lock_key("wait", &self.qualified())
    }

    /// The first half of the advisory locks that order a worker's claims and its
    /// deregistration (the second is the worker's id): claims take it shared, the worker's
    /// deregistration exclusively (see `sql/functions/claim.sql`).
    pub fn claims_lock_key(&self) -> i32 {
        let hash = lock_key("claims", &self.qualified()) as u64;
        i32::from_ne_bytes(((hash >> 32) as u32 ^ hash as u32).to_ne_bytes())
    }

    /// The first half of the advisory locks that put the claims of a limited queue, or of a
    /// task with a policy, one after another (the second is a hash of the queue's or task's
    /// name; see `sql/functions/claim_limited.sql`).
    pub fn flows_lock_key(&self) -> i32 {
        let hash = lock_key("flows", &self.qualified()) as u64;
        i32::from_ne_bytes(((hash >> 32) as u32 ^ hash as u32).to_ne_bytes())
    }
}

fn check_identifier(kind: &'static str, name: &str, max_len: usize) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > max_len {
        if kind == "table" {
            "it is longer than 48 bytes"
        } else {
            "it is longer than 63 bytes"
        }
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidIdentifier {
        kind,
        name: name.to_owned(),
        reason,
    })
}

/// Quotes an identifier for PostgreSQL: `a"b` becomes `"a""b"`.
pub(crate) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Quotes a string literal for PostgreSQL (only for names, fixed when the statements are
/// rendered; values are bound). An escape string reads the same whatever
/// `standard_conforming_strings` says, where a plain one would take a backslash in a name for an
/// escape when it is off.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The qualified name of an object named after the table, as a string literal for `format()`:
/// the names' own `%` doubled, and `%s` in `suffix` left for `format()` to fill in.
fn format_literal(table: &TableName, suffix: &str) -> String {
    const SLOT: char = '\u{1}';
    let name = table.qualified_derived(&suffix.replace("%s", &SLOT.to_string()));
    quote_literal(&name.replace('%', "%%").replace(SLOT, "%s"))
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s hasher.
/// The advisory lock key for `purpose` on `name`: the same in every process and version.
fn lock_key(purpose: &str, name: &str) -> i64 {
    i64::from_ne_bytes(fnv1a(format!("pq {purpose} {name}").as_bytes()).to_ne_bytes())
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fills in the placeholders of a migration or a function (see
/// `sql/migrations/0001_create_queue.sql`).
pub(crate) fn render(template: &str, table: &TableName) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let key = &after[..end];
        let value = match key.split_once(':') {
            None if key == "table" => table.qualified(),
            None if key == "channel" => quote_literal(&table.channel()),
            None if key == "wait_lock" => table.wait_lock_key().to_string(),
            None if key == "dollar" => table.dollar_quote(),
            None if key == "claim_cursor" => quote_literal(&table.claim_cursor()),
            None if key == "ended" => quote_literal(&table.ended_setting()),
            None if key == "claims_lock" => table.claims_lock_key().to_string(),
            None if key == "flows_lock" => table.flows_lock_key().to_string(),
            Some(("name", suffix)) => table.derived(suffix),
            Some(("qualified", suffix)) => table.qualified_derived(suffix),
            Some(("literal", suffix)) => quote_literal(&table.qualified_derived(suffix)),
            Some(("format", suffix)) => format_literal(table, suffix),
            _ => panic!("unknown placeholder {{{{{key}}}}} in a migration"),
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The statements of one table.
#[derive(Debug)]
pub(crate) struct Statements {
    pub table: TableName,
    /// Whether statements stay prepared on their connection: not behind a transaction pooler,
    /// which hands each transaction a server connection that never saw them.
    pub prepared: bool,
    pub channel: String,
    pub put: String,
    pub put_many: String,
    pub put_jobs: String,
    pub put_jobs_now: String,
    pub put_unique: String,
    pub put_jobs_unique: String,
    pub put_graph: String,
    pub lock_parents: String,
    pub put_edges: String,
    pub settle_ended: String,
    pub sweep_edges: String,
    pub get: String,
    pub give_back: String,
    pub fail_unreadable: String,
    pub wait: String,
    pub len: String,
    pub clear: String,
    pub cancel_parent: String,
    pub cancel_parents_of_queue: String,
    pub update_data: String,
    pub claim: String,
    pub claimed_data: String,
    pub claim_lock: String,
    pub claims_over: String,
    pub claim_jobs: String,
    pub complete_delete: String,
    pub complete_parents: String,
    pub complete_keep: String,
    pub complete_delete_by_row: String,
    pub complete_keep_by_row: String,
    pub complete_returned: String,
    pub outcomes: String,
    pub status: String,
    pub step_output: String,
    pub record_step: String,
    pub record_claimed_step: String,
    pub sweep_steps: String,
    pub expire: String,
    pub fail: String,
    pub snooze: String,
    pub cancel_running: String,
    pub release: String,
    pub register: String,
    pub heartbeat: String,
    pub register_again: String,
    pub deregister: String,
    pub release_held: String,
    pub rescue: String,
    pub reap_workers: String,
    pub notify: String,
    pub schema_version: String,
    pub migrations_table: String,
    pub functions_table: String,
}

/// When a job became ready: when it was enqueued, or when its `schedule_at` fell due (a
/// delayed job, a retry). The dequeue index orders by it (migration 0011).
pub(crate) const READY_AT: &str = "GREATEST(schedule_at, enqueued_at)";

/// A job's state as an operator names it (`JobState`): `ready` or `scheduled` rather than
/// `queued`, by whether its ready time has passed. Its columns from table alias `t`.
pub(crate) const OPERATOR_STATE: &str = "CASE WHEN t.state <> 'queued' THEN t.state \
    WHEN GREATEST(t.schedule_at, t.enqueued_at) > statement_timestamp() THEN 'scheduled' \
    ELSE 'ready' END";

/// A job's priority in the dequeue index: its `expected_at`, with the jobs expected at no time
/// after all the others.
pub(crate) const EXPECTED: &str = "COALESCE(expected_at, 'infinity')";

impl Statements {
    /// `sqlx::query(sql)`, kept prepared on its connection unless [`prepared`](Self::prepared)
    /// is off.
    pub fn query<'q>(&self, sql: &'q str) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql).persistent(self.prepared)
    }

    /// `sqlx::query_scalar(sql)`, prepared as [`query`](Self::query) is.
    pub fn query_scalar<'q, O>(&self, sql: &'q str) -> QueryScalar<'q, Postgres, O, PgArguments>
    where
        (O,): for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_scalar(sql).persistent(self.prepared)
    }

    /// `sqlx::query_as(sql)`, prepared as [`query`](Self::query) is.
    pub fn query_as<'q, O>(&self, sql: &'q str) -> QueryAs<'q, Postgres, O, PgArguments>
    where
        O: for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_as(sql).persistent(self.prepared)
    }

    pub fn new(table: TableName, prepared: bool) -> Self {
        let t = table.qualified();
        // Whether a put on the queues `notify` calls for notified (see
        // `sql/functions/notify.sql`): it takes the wait lock shared until it commits, then
        // reads the table-wide registration; only while that holds, or while someone else
        // holds the lock, does it call the function that reads a queue's own registration and
        // notifies.
        let notified_by = |notify: &str| {
            format!(
                "CASE WHEN (CASE WHEN pg_try_advisory_xact_lock_shared({lock}) \
                                THEN pg_sequence_last_value({waiting}::regclass) \
                                     > extract(epoch FROM clock_timestamp()) * 1000 \
                                ELSE true END) \
                      THEN {notify} ELSE false END",
                lock = table.wait_lock_key(),
                waiting = quote_literal(&table.qualified_derived("waiting")),
            )
        };
        let notify = table.qualified_derived("notify");
        let notified = notified_by(&format!("{notify}($1)"));
        // A key as stored: as given, or its digest past 1,000 bytes (an index entry holds at
        // most 2,704, and the key is the JSON of arguments, which may be long).
        let stored = |key: &str| {
            format!("CASE WHEN octet_length({key}) > 1000 THEN 'md5:' || md5({key}) ELSE {key} END")
        };
        // A job's flow key (migration 19) travels in its meta, as `pq.flow` (see `NewJob::flow_key`).
        let flow = |meta: &str| stored(&format!("({meta}::jsonb ->> 'pq.flow')"));
        // `$n * interval '1 microsecond'` turns a bound delay into an interval; a NULL delay
        // leaves the time NULL so that COALESCE falls through to the next choice.
        let put = format!(
            "INSERT INTO {t} (q_name, task, data, schedule_at, expected_at, timeout, meta, flow) \
             VALUES ($1, $2, $3::json, \
               COALESCE($4, statement_timestamp() + $5 * interval '1 microsecond', '-infinity'), \
               COALESCE($6, statement_timestamp() + $7 * interval '1 microsecond'), \
               $8 * interval '1 microsecond', $9::jsonb, {flow}) \
             RETURNING id, {notified} AS notified",
            flow = flow("$9"),
        );
        // Jobs of any queues and tasks, each with its own times ($1 to $9: one array a column,
        // in the order of `put`'s parameters; a shorter one is padded with NULLs); each queue
        // is notified once. The rows are inserted in the arrays' order, and so numbered by
        // the sequence. Jobs that set no time, timeout or meta, as most batches, skip the six
        // columns' arrays and their expressions: a quarter of the statement's time.
        let notified_jobs = notified_by(&format!(
            "(SELECT bool_or({notify}(q)) FROM (SELECT DISTINCT q FROM unnest($1::text[]) AS q) AS queues)"
        ));
        let put_jobs = format!(
            "INSERT INTO {t} (q_name, task, data, schedule_at, expected_at, timeout, meta, flow) \
             SELECT q, task, d::json, \
               COALESCE(s_at, statement_timestamp() + s_in * interval '1 microsecond', '-infinity'), \
               COALESCE(e_at, statement_timestamp() + e_in * interval '1 microsecond'), \
               limit_us * interval '1 microsecond', m::jsonb, {flow} \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], \
               $6::timestamptz[], $7::int8[], $8::int8[], $9::text[]) \
               AS j(q, task, d, s_at, s_in, e_at, e_in, limit_us, m) \
             RETURNING id, (SELECT {notified_jobs}) AS notified",
            flow = flow("m"),
        );
        // A unique task's jobs ($10: each one's key), meeting a job that waits with the same key
        // (`unique_idx`, migration 16) as `$11` says: 0 keeps it as it is (skip), 1 replaces
        // its arguments, times and queue with the call's, 2 replaces them but pushes its time
        // back to the call's, never past its first enqueue plus `$12` (debounce). The conflict
        // writes the waiting row either way, which is what locks it and returns it: a DO
        // NOTHING would return nothing for a row committed since the statement's snapshot.
        // Returns whether each row is new (`xmax = 0`: no one updated it).
        let waiting = "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = 'queued'";
        let merged =
            "(q_name, task, data, schedule_at, expected_at, timeout, meta, flow) = (SELECT \
               CASE WHEN c.m = 0 THEN j.q_name ELSE EXCLUDED.q_name END, \
               CASE WHEN c.m = 0 THEN j.task ELSE EXCLUDED.task END, \
               CASE WHEN c.m = 0 THEN j.data ELSE EXCLUDED.data END, \
               CASE c.m WHEN 0 THEN j.schedule_at WHEN 1 THEN EXCLUDED.schedule_at \
                 ELSE GREATEST(j.schedule_at, LEAST(EXCLUDED.schedule_at, \
                   j.enqueued_at + c.max * interval '1 microsecond')) END, \
               CASE WHEN c.m = 0 THEN j.expected_at ELSE EXCLUDED.expected_at END, \
               CASE WHEN c.m = 0 THEN j.timeout ELSE EXCLUDED.timeout END, \
               CASE WHEN c.m = 0 THEN j.meta ELSE EXCLUDED.meta END, \
               CASE WHEN c.m = 0 THEN j.flow ELSE EXCLUDED.flow END";
        let put_unique = format!(
            "INSERT INTO {t} AS j (q_name, task, data, schedule_at, expected_at, timeout, meta, \
               unique_key, flow) \
             VALUES ($1, $2, $3::json, \
               COALESCE($4, statement_timestamp() + $5 * interval '1 microsecond', '-infinity'), \
               COALESCE($6, statement_timestamp() + $7 * interval '1 microsecond'), \
               $8 * interval '1 microsecond', $9::jsonb, {key}, {flow}) \
             {waiting} DO UPDATE SET {merged} \
               FROM (SELECT $11::int4 AS m, $12::int8 AS max) AS c) \
             RETURNING id, xmax = 0 AS inserted, {notified} AS notified",
            key = stored("$10::text"),
            flow = flow("$9"),
        );
        // `put_jobs` with keys ($10), all meeting a waiting job one way ($11, $12, as in
        // `put_unique`). The caller sends each key once, in the keys' order, so that two
        // batches lock the waiting jobs they meet in one order. Returns the place in the arrays
        // (from 1) of each keyed row, joined by key (a hash join: a lookup per row would make a
        // large batch quadratic), to tell which call it answers: a row that met a waiting job
        // has that job's id.
        let put_jobs_unique = format!(
            "WITH c AS MATERIALIZED (SELECT n, {key} AS k \
               FROM unnest($10::text[]) WITH ORDINALITY AS c(k, n) WHERE k IS NOT NULL), \
             written AS (INSERT INTO {t} AS j (q_name, task, data, schedule_at, expected_at, \
               timeout, meta, unique_key, flow) \
             SELECT q, task, d::json, \
               COALESCE(s_at, statement_timestamp() + s_in * interval '1 microsecond', '-infinity'), \
               COALESCE(e_at, statement_timestamp() + e_in * interval '1 microsecond'), \
               limit_us * interval '1 microsecond', mt::jsonb, {key}, {flow} \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], \
               $6::timestamptz[], $7::int8[], $8::int8[], $9::text[], $10::text[]) \
               AS r(q, task, d, s_at, s_in, e_at, e_in, limit_us, mt, k) \
             {waiting} DO UPDATE SET {merged} \
               FROM (SELECT $11::int4 AS m, $12::int8 AS max) AS c) \
             RETURNING id, xmax = 0 AS inserted, unique_key, \
               (SELECT {notified_jobs}) AS notified) \
             SELECT w.id, w.inserted, c.n FROM written AS w LEFT JOIN c ON c.k = w.unique_key",
            key = stored("k"),
            flow = flow("mt"),
        );
        // A graph's jobs (`put_jobs`' arrays, then $10: how many parents each waits for, $11:
        // whether it has children): a job that waits is `waiting`, and only the queues of
        // those that do not are notified.
        let notified_ready = notified_by(&format!(
            "(SELECT bool_or({notify}(q)) FROM (SELECT DISTINCT q \
               FROM unnest($1::text[], $10::int4[]) AS r(q, w) WHERE w = 0) AS queues)"
        ));
        let put_graph = format!(
            "INSERT INTO {t} (q_name, task, data, schedule_at, expected_at, timeout, meta, flow, \
               state, waits, releases) \
             SELECT q, task, d::json, \
               COALESCE(s_at, statement_timestamp() + s_in * interval '1 microsecond', '-infinity'), \
               COALESCE(e_at, statement_timestamp() + e_in * interval '1 microsecond'), \
               limit_us * interval '1 microsecond', m::jsonb, {flow}, \
               CASE WHEN w > 0 THEN 'waiting' ELSE 'queued' END, NULLIF(w, 0), NULLIF(r, false) \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], \
               $6::timestamptz[], $7::int8[], $8::int8[], $9::text[], $10::int4[], $11::bool[]) \
               AS j(q, task, d, s_at, s_in, e_at, e_in, limit_us, m, w, r) \
             RETURNING id, (SELECT {notified_ready}) AS notified",
            flow = flow("m"),
        );
        // Parents already in the table ($1), locked in id order until the graph commits.
        let lock_parents =
            format!("SELECT id, state FROM {t} WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE");
        // A graph's edges (parent, child, policy, slot, position), under a new workflow id,
        // which it returns; those from the jobs already in the table ($6) are marked external,
        // and of these jobs the ones that have not ended now release.
        let after = table.qualified_derived("after");
        let put_edges = format!(
            "WITH workflow AS (SELECT nextval({workflows}) AS id), \
             edges AS (INSERT INTO {after} (parent, child, workflow, external, policy, slot, \
                 position) \
               SELECT p, c, workflow.id, NULLIF(p = ANY($6), false), policy, slot, position \
               FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int4[]) \
                 AS e(p, c, policy, slot, position), workflow), \
             marked AS (UPDATE {t} SET releases = true \
               WHERE id = ANY($6) AND state IN ('queued', 'running', 'waiting') \
                 AND releases IS NULL) \
             SELECT id FROM workflow",
            workflows = quote_literal(&table.qualified_derived("workflows")),
        );
        // Parents already in the table that had ended, or are gone (succeeded), when their
        // child was added: settled at once (`sql/functions/settle.sql`).
        let settle_ended = format!(
            "SELECT {}($1, NULL)",
            table.qualified_derived("settle_ended")
        );
        // Edges neither of whose jobs is in the table any more, a bounded batch at a time: the
        // rest show a job's parents and children, and a workflow's graph, while they are.
        let sweep_edges = format!(
            "DELETE FROM {after} AS a USING (SELECT o.parent, o.child FROM {after} AS o \
               WHERE NOT EXISTS (SELECT FROM {t} AS j WHERE j.id = o.child) \
                 AND NOT EXISTS (SELECT FROM {t} AS j WHERE j.id = o.parent) \
               LIMIT $1 FOR UPDATE OF o SKIP LOCKED) AS gone \
             WHERE a.parent = gone.parent AND a.child = gone.child"
        );
        let put_jobs_now = format!(
            "INSERT INTO {t} (q_name, task, data, schedule_at) \
             SELECT q, task, d::json, '-infinity' \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS j(q, task, d) \
             RETURNING id, (SELECT {notified_jobs}) AS notified"
        );
        // The same decision once for the statement, not once a row: a sub-select's value.
        let put_many = format!(
            "INSERT INTO {t} (q_name, data, schedule_at, expected_at) \
             SELECT $1, d::json, \
               COALESCE($3, statement_timestamp() + $4 * interval '1 microsecond', '-infinity'), \
               COALESCE($5, statement_timestamp() + $6 * interval '1 microsecond') \
             FROM unnest($2::text[]) AS d \
             RETURNING id, (SELECT {notified}) AS notified"
        );
        // The first ready job of queue $1 in dequeue order, as the claim reads it
        // (`sql/functions/claim.sql`): the jobs with an expected time, then the others.
        let ready = |extra: &str| {
            format!(
                "SELECT * FROM (SELECT id FROM {t} \
                   WHERE q_name = $1 AND state = 'queued' AND {EXPECTED} < 'infinity' \
                     AND {READY_AT} <= statement_timestamp() \
                   ORDER BY {EXPECTED}, {READY_AT}, id LIMIT 1 {extra}) AS expected_first \
                 UNION ALL \
                 SELECT * FROM (SELECT id FROM {t} \
                   WHERE q_name = $1 AND state = 'queued' AND {EXPECTED} = 'infinity' \
                     AND {READY_AT} <= statement_timestamp() \
                   ORDER BY {READY_AT}, id LIMIT 1 {extra}) AS the_rest \
                 LIMIT 1"
            )
        };
        let get = format!(
            "WITH next AS ({}) \
             UPDATE {t} AS j SET state = 'done', dequeued_at = statement_timestamp(), \
               finished_at = statement_timestamp(), unique_key = NULL \
             FROM next WHERE j.id = next.id \
             RETURNING {}",
            ready("FOR UPDATE SKIP LOCKED"),
            job_columns("j")
        );
        // A job a `get` took but could not hand over (its caller was gone, or the commit's
        // answer was lost): queued again, if it is still the one that get took.
        let give_back = format!(
            "WITH back AS (UPDATE {t} SET state = 'queued', dequeued_at = NULL, finished_at = NULL, \
               unique_key = NULL \
               WHERE id = $1 AND state = 'done' AND dequeued_at = $2 RETURNING q_name) \
             SELECT pg_notify({channel}, CASE WHEN octet_length(q_name) < 8000 THEN q_name ELSE '' END) \
             FROM back",
            channel = quote_literal(&table.channel()),
        );
        // A job whose row pq cannot read fails alone, saying why, instead of being taken again
        // and again.
        let fail_unreadable = format!(
            "UPDATE {t} SET state = 'failed', finished_at = statement_timestamp(), \
               last_error = $2 WHERE id = $1"
        );
        // A claim, in a function whose plan is made once per connection
        // (`sql/functions/claim.sql`); the data of its large jobs, which it leaves out.
        let claim = format!(
            "SELECT * FROM {}($1, $2, $3, $4, $5, $6, true)",
            table.qualified_derived("claim")
        );
        // The claim of chosen jobs (a test's run of one job), ready ones only, paused queues
        // or not: one claim id, after the worker's lock (`claim_lock`, in the same transaction)
        // as the claim function takes it, so that its snapshot sees a deregistration.
        let claim_lock = format!(
            "SELECT pg_advisory_xact_lock_shared({}, ($1 & 2147483647)::int4)",
            table.claims_lock_key()
        );
        // Every claim of the worker is over: one it abandoned may still run in the server,
        // holding its jobs locked (see `release_unknown` in pq-core/src/workers.rs).
        let claims_over = format!(
            "SELECT pg_advisory_xact_lock({}, ($1 & 2147483647)::int4)",
            table.claims_lock_key()
        );
        let claim_jobs = format!(
            "WITH claim AS (SELECT nextval({claims}) AS n \
                    WHERE EXISTS (SELECT FROM {workers} AS w WHERE w.id = $1)) \
             UPDATE {t} AS j SET state = 'running', attempts = GREATEST(j.attempts, 0) + 1, \
               claim_id = claim.n, worker_id = $1, dequeued_at = statement_timestamp(), \
               locked_until = NULL, unique_key = NULL \
             FROM claim \
             WHERE j.id IN (SELECT id FROM {t} WHERE id = ANY ($2) AND state = 'queued' \
                 AND {READY_AT} <= statement_timestamp() ORDER BY id LIMIT $3 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING claim.n, j.id, j.attempts, COALESCE(j.rescues, 0), j.ctid, j.q_name, \
               convert_to(j.task, 'SQL_ASCII'), \
               CASE WHEN pg_column_size(j.data) < 8192 THEN convert_to(j.data::text, 'SQL_ASCII') END, \
               j.enqueued_at, j.schedule_at, j.expected_at, j.timeout, \
               convert_to(j.meta::text, 'SQL_ASCII')",
            claims = quote_literal(&table.qualified_derived("claims")),
            workers = table.qualified_derived("workers"),
        );
        let claimed_data = format!(
            "SELECT id, {} FROM {t} WHERE id = ANY($1) AND claim_id = $2",
            as_bytes("data::text")
        );
        // Outcomes are fenced: they touch a job only while it is still running the claim the
        // caller holds, never after a release, a rescue or an operator handed it on. A claim id
        // never repeats, so a stale one can never match again.
        //
        // `COALESCE(j.state = 'running', false)` is `j.state = 'running'` in a form the planner
        // cannot estimate from the table's statistics. Those are taken while hardly any job
        // runs, so read literally the test looks like it matches no row, and the planner then
        // scans every running job (or the whole table) once per id of the batch: seconds for a
        // batch of a thousand. Left opaque, each id is looked up by primary key.
        //
        // Callers pass their claims in id order, so that two statements locking the same rows
        // lock them in one order and cannot deadlock.
        let claims = "unnest($1::int8[], $2::int8[]) AS f(id, claim)";
        let held = "j.id = f.id AND j.claim_id = f.claim AND COALESCE(j.state = 'running', false)";
        let fenced = format!("FROM {claims} WHERE {held}");
        // The ids these statements touched, as one array: one row to send and decode, not one
        // a job.
        let touched = |statement: String| {
            format!(
                "WITH touched AS ({statement} RETURNING j.id) \
                 SELECT COALESCE(array_agg(id), '{{}}') FROM touched"
            )
        };
        let done = "state = 'done', worker_id = NULL, finished_at = statement_timestamp()";
        let complete_delete = touched(format!(
            "DELETE FROM {t} AS j USING {claims} WHERE {held} AND j.releases IS NULL"
        ));
        // A parent is kept `done` rather than deleted, so that the triggers of migration 25
        // settle its children, and expires at once: the workers' maintenance deletes it. Run
        // for the jobs a deleting completion missed, in a statement of its own, whose
        // snapshot sees a parent that gained its child while that one waited for its row.
        let complete_parents = touched(format!(
            "UPDATE {t} AS j SET {done}, expires_at = statement_timestamp() \
             FROM {claims} WHERE {held} AND j.releases"
        ));
        let complete_keep = touched(format!("UPDATE {t} AS j SET {done} {fenced}"));
        // The worker's batches find their rows by the `ctid` their claim returned, a TID scan
        // per job rather than a primary key lookup: a running job's row does not move (nothing
        // writes it until its outcome). Other SQL may have moved one; the caller completes those
        // this misses by id.
        let located = "unnest($1::int8[], $2::int8[], $3::tid[]) AS f(id, claim, row)";
        let complete_delete_by_row = touched(format!(
            "DELETE FROM {t} AS j USING {located} \
             WHERE j.ctid = f.row AND {held} AND j.releases IS NULL"
        ));
        let complete_keep_by_row = touched(format!(
            "UPDATE {t} AS j SET {done} FROM {located} WHERE j.ctid = f.row AND {held}"
        ));
        // Runs that returned a value ($3, JSON text), many at a time: kept done with it for
        // their time ($4, in microseconds; NULL: for good). By id, not by row version: these
        // are rarer than plain completions, and the primary key finds them all the same.
        //
        // Their handles' waits are woken by a notification on the results' own name, sent
        // as a put's, only while some process waits (`poll` in pq-core/src/results.rs).
        let results_notified = notified_by(&format!(
            "{notify}({})",
            quote_literal(crate::results::RESULTS)
        ));
        let complete_returned = format!(
            "WITH touched AS (UPDATE {t} AS j SET {done}, result = f.result::json, \
               expires_at = statement_timestamp() + f.keep * interval '1 microsecond' \
             FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int8[]) AS f(id, claim, result, keep) \
             WHERE {held} RETURNING j.id) \
             SELECT COALESCE(array_agg(id), '{{}}'), (SELECT {results_notified}) FROM touched"
        );
        // What became of the jobs someone waits for (`JobHandle::outcome`): a row for each
        // that exists, whatever its state; one missing is gone (expired, deleted) or was never
        // committed.
        let outcomes =
            format!("SELECT id, state, result::text, last_error FROM {t} WHERE id = ANY($1)");
        // A job's state as an operator names it (see `JobState`).
        let status = format!("SELECT {OPERATOR_STATE} FROM {t} AS t WHERE id = $1");
        // Durable steps (migration 24): a step's output, its record (nothing when a run of the
        // job recorded it first), and the records of jobs that will not run again, a bounded
        // batch at a time.
        let steps = table.qualified_derived("steps");
        let step_output = format!("SELECT output::text FROM {steps} WHERE job = $1 AND name = $2");
        let record_step = format!(
            "INSERT INTO {steps} (job, name, output) VALUES ($1, $2, $3::json) \
             ON CONFLICT DO NOTHING RETURNING true"
        );
        // The same, fenced by the run's claim ($4): only while the job is still running it,
        // whose row stays locked until the record commits, so that no rescue, cancel or
        // completion of another run passes it meanwhile. Says whether the claim held, and
        // whether the record is this run's.
        let record_claimed_step = format!(
            "WITH held AS (SELECT id FROM {t} \
               WHERE id = $1 AND claim_id = $4 AND COALESCE(state = 'running', false) FOR SHARE), \
             recorded AS (INSERT INTO {steps} (job, name, output) \
               SELECT id, $2, $3::json FROM held ON CONFLICT DO NOTHING RETURNING true) \
             SELECT EXISTS (SELECT FROM held), EXISTS (SELECT FROM recorded)"
        );
        // A failed job keeps its records: an operator's retry of it skips the steps it
        // completed.
        let sweep_steps = format!(
            "DELETE FROM {steps} AS s USING (SELECT o.job, o.name FROM {steps} AS o \
               WHERE NOT EXISTS (SELECT FROM {t} AS j \
                 WHERE j.id = o.job AND j.state IN ('queued', 'running', 'failed')) \
               LIMIT $1 FOR UPDATE OF o SKIP LOCKED) AS ended \
             WHERE s.job = ended.job AND s.name = ended.name"
        );
        // Finished jobs whose time ran out, oldest first, a bounded batch: the rows other
        // sessions hold are left to the next round.
        let expire = format!(
            "WITH gone AS (SELECT id FROM {t} \
               WHERE expires_at < statement_timestamp() AND state = 'done' \
               ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             DELETE FROM {t} AS j USING gone WHERE j.id = gone.id"
        );
        // Failed attempts, many at a time: each with its error, and the delay before its next
        // attempt (NULL: it gave up). An `errors` history that other SQL left as something else
        // than a list still takes the entry (`||` wraps a scalar or an object).
        let fail = touched(format!(
            "UPDATE {t} AS j SET \
               state = CASE WHEN f.retry_in IS NULL THEN 'failed' ELSE 'queued' END, \
               schedule_at = CASE WHEN f.retry_in IS NULL THEN j.schedule_at \
                 ELSE statement_timestamp() + f.retry_in * interval '1 microsecond' END, \
               finished_at = CASE WHEN f.retry_in IS NULL THEN statement_timestamp() END, \
               worker_id = NULL, locked_until = NULL, unique_key = NULL, last_error = f.error, \
               errors = COALESCE(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object( \
                 'attempt', j.attempts, 'error', f.error, 'at', statement_timestamp())) \
             FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int8[]) \
               AS f(id, claim, error, retry_in) \
             WHERE {held}"
        ));
        // Snoozed runs ($3: each one's delay), many at a time: queued again after the delay,
        // their attempt uncounted, unless the job has snoozed $4 times already: then it fails
        // for good, saying so ($5).
        let again = "COALESCE(j.snoozes, 0) < $4";
        let snooze = touched(format!(
            "UPDATE {t} AS j SET \
               state = CASE WHEN {again} THEN 'queued' ELSE 'failed' END, \
               schedule_at = CASE WHEN {again} \
                 THEN statement_timestamp() + f.delay * interval '1 microsecond' \
                 ELSE j.schedule_at END, \
               attempts = CASE WHEN {again} THEN GREATEST(j.attempts - 1, 0) ELSE j.attempts END, \
               finished_at = CASE WHEN {again} THEN NULL ELSE statement_timestamp() END, \
               last_error = CASE WHEN {again} THEN j.last_error ELSE $5 END, \
               errors = CASE WHEN {again} THEN j.errors \
                 ELSE COALESCE(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object( \
                   'attempt', j.attempts, 'error', $5::text, 'at', statement_timestamp())) END, \
               snoozes = COALESCE(j.snoozes, 0) + CASE WHEN {again} THEN 1 ELSE 0 END, \
               worker_id = NULL, locked_until = NULL, unique_key = NULL \
             FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS f(id, claim, delay) \
             WHERE {held}"
        ));
        // Runs stopped because an operator cancelled their job: `cancelled` for good, saying
        // so, never retried.
        let cancel_running = touched(format!(
            "UPDATE {t} AS j SET state = 'cancelled', finished_at = statement_timestamp(), \
               worker_id = NULL, locked_until = NULL, last_error = f.error \
             FROM unnest($1::int8[], $2::int8[], $3::text[]) AS f(id, claim, error) \
             WHERE {held}"
        ));
        // Gives claimed jobs back untouched (a worker stopping before it ran them, or whose
        // run was cut short by its shutdown): the attempt is not counted. Returns the queues,
        // to wake their consumers.
        let release = format!(
            "UPDATE {t} AS j SET state = 'queued', attempts = GREATEST(j.attempts - 1, 0), \
               worker_id = NULL, locked_until = NULL, unique_key = NULL \
             {fenced} RETURNING j.id, j.q_name"
        );
        let workers = table.qualified_derived("workers");
        let lease = "statement_timestamp() + $2 * interval '1 microsecond'";
        let register = format!(
            "INSERT INTO {workers} (host, pid, queues, concurrency, version, tasks, expires_at) \
             VALUES ($2, $3, $4, $5, $6, $7, statement_timestamp() + $1 * interval '1 microsecond') \
             RETURNING id"
        );
        // The heartbeat: one write per worker, whatever it runs. Says whether the worker's
        // lease had run out before it (its jobs may have been rescued), or whether its row was
        // gone altogether (reaped long after its lease ran out).
        //
        // It also answers the requests to cancel this worker's jobs, keeping each until its job
        // has ended: a reply lost on the way costs only a heartbeat. (Its snapshot may predate
        // the claim of a job asked since, so "running on this worker" would drop that one.)
        let heartbeat = format!(
            "WITH before AS (SELECT expires_at FROM {workers} WHERE id = $1 FOR UPDATE) \
             UPDATE {workers} AS w SET seen_at = statement_timestamp(), expires_at = {lease}, \
               cancel = CASE WHEN w.cancel IS NOT NULL THEN NULLIF(ARRAY( \
                 SELECT j.id FROM {t} AS j WHERE j.id = ANY (w.cancel) \
                   AND COALESCE(j.state IN ('queued', 'running'), false) ORDER BY j.id), '{{}}') END \
             FROM before WHERE w.id = $1 \
             RETURNING before.expires_at < statement_timestamp() AS lapsed, \
               COALESCE(w.cancel, '{{}}') AS cancel"
        );
        let register_again = format!(
            "INSERT INTO {workers} (id, host, pid, queues, concurrency, version, tasks, expires_at) \
             OVERRIDING SYSTEM VALUE VALUES ($1, $3, $4, $5, $6, $7, $8, {lease}) \
             ON CONFLICT (id) DO UPDATE SET seen_at = statement_timestamp(), \
               expires_at = excluded.expires_at, tasks = excluded.tasks"
        );
        // A running job goes back to the queue once its worker's heartbeat ran out, or its
        // worker's row is gone (and, for a job claimed by a pq before migration 10, once its
        // own lease ran out). A run lost with its worker does not count against the task's
        // retries, but against its own budget ($2), so that a job that kills its worker each
        // time still ends: past it, the job fails for good. A job someone asked its worker to
        // cancel ends cancelled instead. Returns each job's queue and whether it was queued
        // again, to wake their consumers.
        let lost_with_worker = "jsonb_build_array(jsonb_build_object('attempt', j.attempts, \
             'error', CASE WHEN COALESCE(j.rescues, 0) < $2 THEN $3::text ELSE $4::text END, \
             'at', statement_timestamp()))";
        let rescue = format!(
            "WITH lost AS ( \
               SELECT j.id, EXISTS (SELECT FROM {workers} AS w \
                   WHERE w.id = j.worker_id AND j.id = ANY (w.cancel)) AS cancelled \
               FROM {t} AS j \
               WHERE j.state = 'running' \
                 AND NOT EXISTS (SELECT FROM {workers} AS w \
                   WHERE w.id = j.worker_id AND w.expires_at >= statement_timestamp()) \
                 AND (j.worker_id IS NOT NULL OR j.locked_until IS NULL \
                   OR j.locked_until < statement_timestamp()) \
               ORDER BY j.id LIMIT $1 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE {t} AS j SET \
               state = CASE WHEN lost.cancelled THEN 'cancelled' \
                 WHEN COALESCE(j.rescues, 0) < $2 THEN 'queued' ELSE 'failed' END, \
               finished_at = CASE WHEN COALESCE(j.rescues, 0) < $2 AND NOT lost.cancelled \
                 THEN NULL ELSE statement_timestamp() END, \
               last_error = CASE WHEN lost.cancelled THEN 'cancelled while it ran' \
                 WHEN COALESCE(j.rescues, 0) < $2 THEN $3 ELSE $4 END, \
               errors = COALESCE(j.errors, '[]'::jsonb) || {lost_with_worker}, \
               rescues = COALESCE(j.rescues, 0) + 1, worker_id = NULL, locked_until = NULL, unique_key = NULL \
             FROM lost WHERE j.id = lost.id \
             RETURNING j.q_name, j.state = 'queued'"
        );
        let cancelled_parent = "state = 'cancelled', finished_at = statement_timestamp(), \
            last_error = 'deleted before it ended', waits = NULL";
        Self {
            prepared,
            notify: "SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q".to_owned(),
            channel: table.channel(),
            // Run by a consumer about to wait: registers it, so that puts notify, and says how
            // long it may wait (see `sql/functions/wait.sql`).
            wait: format!("SELECT {}($1)", table.qualified_derived("wait")),
            len: format!(
                "SELECT count(*) FROM {t} \
                 WHERE q_name = $1 AND state = 'queued' AND {READY_AT} <= statement_timestamp()"
            ),
            // A job that others wait for and has not ended is left (its cancel is below):
            // deleted, it would leave them waiting.
            clear: format!(
                "DELETE FROM {t} WHERE q_name = $1 \
                   AND NOT (COALESCE(releases, false) AND state IN ('queued', 'waiting', 'running'))"
            ),
            // Parents that have not ended are cancelled before a delete, so that their
            // children settle (migration 25 has no trigger on DELETE).
            cancel_parent: format!(
                "UPDATE {t} SET {cancelled_parent} \
                 WHERE id = $1 AND releases AND state IN ('queued', 'waiting')"
            ),
            // Running ones too: their workers' outcomes are then refused.
            cancel_parents_of_queue: format!(
                "UPDATE {t} SET {cancelled_parent}, worker_id = NULL, locked_until = NULL \
                 WHERE q_name = $1 AND releases AND state IN ('queued', 'waiting', 'running')"
            ),
            update_data: format!("UPDATE {t} SET data = $2::json WHERE id = $1"),
            // A worker that stops deletes its row once no claim of its is running (claims hold
            // its lock shared, see `sql/functions/claim.sql`), then gives back whatever it still
            // holds (a claim it abandoned half-way, an outcome it could not record): two
            // statements, so that the second sees what those claims committed.
            deregister: format!(
                "WITH locked AS (SELECT pg_advisory_xact_lock({}, ($1 & 2147483647)::int4)) \
                 DELETE FROM {workers} WHERE id = $1 AND (SELECT true FROM locked)",
                table.claims_lock_key()
            ),
            release_held: format!(
                "UPDATE {t} AS j SET state = 'queued', attempts = GREATEST(j.attempts - 1, 0), \
                   worker_id = NULL, locked_until = NULL, unique_key = NULL \
                 WHERE COALESCE(j.state = 'running', false) AND j.worker_id = $1 \
                   AND NOT EXISTS (SELECT FROM unnest($2::int8[], $3::int8[]) AS k(id, claim) \
                     WHERE k.id = j.id AND k.claim = j.claim_id) \
                 RETURNING j.q_name"
            ),
            // Workers whose heartbeat ran out a minute ago, listed as dead until then, once
            // every job of theirs was rescued (a row holds its cancel requests until then);
            // a worker that comes back registers again.
            reap_workers: format!(
                "DELETE FROM {workers} AS w WHERE w.expires_at < statement_timestamp() - interval '1 minute' \
                   AND NOT EXISTS (SELECT FROM {t} AS j \
                     WHERE COALESCE(j.state = 'running', false) AND j.worker_id = w.id)"
            ),
            schema_version: format!(
                "SELECT COALESCE(max(version), 0) FROM {}",
                table.qualified_derived("migrations")
            ),
            migrations_table: table.qualified_derived("migrations"),
            functions_table: table.qualified_derived("functions"),
            put,
            put_many,
            put_jobs,
            put_jobs_now,
            put_unique,
            put_jobs_unique,
            put_graph,
            lock_parents,
            put_edges,
            settle_ended,
            sweep_edges,
            get,
            give_back,
            fail_unreadable,
            claim,
            claimed_data,
            claim_lock,
            claims_over,
            claim_jobs,
            complete_delete,
            complete_parents,
            complete_keep,
            complete_delete_by_row,
            complete_keep_by_row,
            complete_returned,
            outcomes,
            status,
            step_output,
            record_step,
            record_claimed_step,
            sweep_steps,
            expire,
            fail,
            snooze,
            cancel_running,
            release,
            register,
            heartbeat,
            register_again,
            rescue,
            table,
        }
    }
}

/// The columns of a job, in the order [`crate::job::Job`] decodes them, from table alias `j`.
fn job_columns(j: &str) -> String {
    format!(
        "{j}.id, {q_name}, {task}, {data}, {j}.attempts, {j}.enqueued_at, \
         {j}.schedule_at, {j}.expected_at, {j}.dequeued_at",
        q_name = as_bytes(&format!("{j}.q_name")),
        task = as_bytes(&format!("{j}.task")),
        data = as_bytes(&format!("{j}.data::text")),
    )
}

/// A text column's bytes as stored, for pq to check as UTF-8 itself. Sent as text, a value
/// that is not valid in the client's encoding (which a database in `SQL_ASCII` may hold) fails
/// the whole statement, and with it every other job it would have taken. Converting to
/// `SQL_ASCII` is no conversion at all, whatever the database's encoding.
pub(crate) fn as_bytes(text: &str) -> String {
    format!("convert_to({text}, 'SQL_ASCII')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_not_trusted() {
        let table = TableName::new(Some("my \"schema\""), "jobs; DROP TABLE x").unwrap();
        assert_eq!(table.qualified(), r#""my ""schema"""."jobs; DROP TABLE x""#);
    }

    #[test]
    fn lock_keys_stay_what_earlier_versions_take() {
        // Workers of two versions on one table must take the same locks.
        let table = TableName::new(Some("s"), "queue").unwrap();
        assert_eq!(table.migration_lock_key(), -6_849_646_510_763_888_526);
        assert_eq!(table.wait_lock_key(), -7_346_036_269_567_208_573);
        assert_eq!(table.claims_lock_key(), -1_306_385_000);
    }

    #[test]
    fn bad_identifiers_are_refused_with_the_reason() {
        let long = "x".repeat(49);
        for (schema, table, reason) in [
            (None, "", "empty"),
            (None, long.as_str(), "48 bytes"),
            (Some(""), "queue", "empty"),
            (None, "a\0b", "NUL"),
        ] {
            let err = TableName::new(schema, table).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn channels_differ_per_table_and_fit_an_identifier() {
        let a = TableName::new(Some("a"), "queue").unwrap().channel();
        let b = TableName::new(Some("b"), "queue").unwrap().channel();
        assert_ne!(a, b);
        assert!(a.len() < 63);
    }

    #[test]
    fn migrations_render_every_placeholder() {
        let table = TableName::new(Some("s"), "q").unwrap();
        let sql = render(
            "CREATE TABLE {{table}}; {{name:idx}} {{qualified:notify}} {{channel}} \
             {{literal:waiting}} {{wait_lock}} {{dollar}}",
            &table,
        );
        assert_eq!(
            sql,
            format!(
                "CREATE TABLE \"s\".\"q\"; \"q_idx\" \"s\".\"q_notify\" E'{}' \
                 E'\"s\".\"q_waiting\"' {} $pq0$",
                table.channel(),
                table.wait_lock_key()
            )
        );
        let awkward = TableName::new(Some("a$pq0$b"), "q").unwrap();
        assert_eq!(render("{{dollar}}", &awkward), "$pq1$");
        let percent = TableName::new(Some("50%s"), "q's").unwrap();
        assert_eq!(
            render("{{format:waiting_%s}}", &percent),
            "E'\"50%%s\".\"q''s_waiting_%s\"'"
        );
        let backslash = TableName::new(Some(r"a\b"), "q").unwrap();
        assert_eq!(render("{{literal:x}}", &backslash), r#"E'"a\\b"."q_x"'"#);
    }
}
