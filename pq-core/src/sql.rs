//! Every statement pq runs, rendered once per table from validated, quoted identifiers.
//! Values are always bound parameters; only identifiers are spliced in, here and nowhere else.

use crate::error::{Error, Result};

/// The dequeue order. It matches the dequeue index column for column, so a claim reads the index
/// in order and stops after the rows it takes. A job expected at no time sorts as if expected at
/// infinity, after every job that is expected; as one key ([`DEQUEUE_KEY`]), the order can be
/// resumed from any job's position (see the claim).
const DEQUEUE_ORDER: &str = "schedule_at, COALESCE(expected_at, 'infinity'), id";

/// A job's position in the dequeue order, as one comparable row.
const DEQUEUE_KEY: &str = "ROW(schedule_at, COALESCE(expected_at, 'infinity'), id)";

/// How long a claim cursor is followed before a claim reads the queue from its start again.
const CURSOR_LIFETIME_MS: u32 = 2_000;

/// A schema-qualified (or search-path) table name, validated.
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

    /// `"schema"."table"`, or `"table"` resolved through the search path.
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
        let schema = self.schema.as_deref().unwrap_or("");
        i64::from_ne_bytes(fnv1a(format!("pq migrate {schema}").as_bytes()).to_ne_bytes())
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

    /// The advisory lock that orders inserts and waiting consumers (see
    /// `migrations/0003_notify_only_waiters.sql`).
    pub fn wait_lock_key(&self) -> i64 {
        i64::from_ne_bytes(fnv1a(format!("pq wait {}", self.qualified()).as_bytes()).to_ne_bytes())
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

/// Quotes a string literal for PostgreSQL (only for values fixed at migration time).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The qualified name of an object named after the table, as a string literal for `format()`:
/// the names' own `%` doubled, and `%s` in `suffix` left for `format()` to fill in.
fn format_literal(table: &TableName, suffix: &str) -> String {
    const SLOT: char = '\u{1}';
    let name = table.qualified_derived(&suffix.replace("%s", &SLOT.to_string()));
    quote_literal(&name.replace('%', "%%").replace(SLOT, "%s"))
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fills in a migration's placeholders (see `migrations/0001_create_queue.sql`).
pub(crate) fn render_migration(template: &str, table: &TableName) -> String {
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
    pub channel: String,
    pub put: String,
    pub put_many: String,
    pub get: String,
    pub next_due: String,
    pub len: String,
    pub clear: String,
    pub update_data: String,
    pub claim: String,
    pub complete_delete: String,
    pub complete_keep: String,
    pub complete_delete_by_row: String,
    pub complete_keep_by_row: String,
    pub fail: String,
    pub renew: String,
    pub rescue: String,
    pub notify: String,
    pub release: String,
    pub migrations_table: String,
}

impl Statements {
    pub fn new(table: TableName) -> Self {
        let t = table.qualified();
        // Whether a put on queue $1 notified (see `migrations/0007_put_decides_to_notify.sql`):
        // it takes the wait lock shared until it commits, then reads the table-wide
        // registration; only while that holds, or while a consumer holds the lock, does it call
        // the function that reads the queue's own registration and notifies.
        let notified = format!(
            "CASE WHEN (CASE WHEN pg_try_advisory_xact_lock_shared({lock}) \
                            THEN pg_sequence_last_value({waiting}::regclass) \
                                 > extract(epoch FROM clock_timestamp()) * 1000 \
                            ELSE true END) \
                  THEN {notify}($1) ELSE false END",
            lock = table.wait_lock_key(),
            waiting = quote_literal(&table.qualified_derived("waiting")),
            notify = table.qualified_derived("notify"),
        );
        // `$n * interval '1 microsecond'` turns a bound delay into an interval; a NULL delay
        // leaves the time NULL so that COALESCE falls through to the next choice.
        let put = format!(
            "INSERT INTO {t} (q_name, task, data, schedule_at, expected_at) \
             VALUES ($1, $2, $3::json, \
               COALESCE($4, statement_timestamp() + $5 * interval '1 microsecond', '-infinity'), \
               COALESCE($6, statement_timestamp() + $7 * interval '1 microsecond')) \
             RETURNING id, {notified} AS notified"
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
        let ready = format!(
            "SELECT id FROM {t} \
             WHERE q_name = $1 AND state = 'queued' AND schedule_at <= statement_timestamp() \
             ORDER BY {DEQUEUE_ORDER}"
        );
        let get = format!(
            "WITH next AS ({ready} LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE {t} AS j SET state = 'done', dequeued_at = statement_timestamp(), \
               finished_at = statement_timestamp() \
             FROM next WHERE j.id = next.id \
             RETURNING {}",
            job_columns("j")
        );
        // A backlog is claimed from a cursor. Each claim leaves on its connection, in a setting
        // named after the table and the queue, the position of the last job it took, and the
        // next claim there starts after it. Otherwise every claim steps again over the index
        // entries of all the jobs claimed before it, which vacuum removes only after a while and
        // never while a transaction older than them stays open: each claim then reads more than
        // the last, and a drain slows down as it goes. The cursor is kept only while ready jobs
        // remain after it (a backlog), and for `CURSOR_LIFETIME_MS` at most: a job that sorts
        // before it (released, rescued, retried, committed late, or more urgent) waits at most
        // that long while a backlog drains, and not at all otherwise.
        //
        // The locked rows reach the aggregate in index order (nothing between the two can
        // reorder them), so the last of each array is the last position. The look for more
        // jobs after it is an ordered subquery (an EXISTS would drop the order) so that it too
        // reads the index from there on, not the table from its start past every claimed row.
        // The update finds its rows by their `ctid`, which cannot change under the row locks
        // just taken: no index lookup per job, and no plan that depends on an estimate of
        // `LIMIT $2`.
        let cursor = format!(
            "'pq.claim_{:016x}_' || left(md5($1), 16)",
            fnv1a(table.qualified().as_bytes())
        );
        let now_ms = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";
        let ready_after = |schedule: &str, expected: &str, id: &str| {
            format!(
                "q_name = $1 AND state = 'queued' AND schedule_at <= statement_timestamp() \
                 AND {DEQUEUE_KEY} > ROW({schedule}, {expected}, {id})"
            )
        };
        let after_cursor = ready_after(
            "COALESCE((SELECT after_schedule FROM cursor), '-infinity')",
            "COALESCE((SELECT after_expected FROM cursor), '-infinity')",
            "COALESCE((SELECT after_id FROM cursor), '-9223372036854775808'::int8)",
        );
        let after_taken = ready_after(
            "taken.last_schedule",
            "taken.last_expected",
            "taken.last_id",
        );
        let claim = format!(
            "WITH cursor AS MATERIALIZED ( \
               SELECT split_part(v, '|', 1)::int8 AS since, \
                 split_part(v, '|', 2)::timestamptz AS after_schedule, \
                 split_part(v, '|', 3)::timestamptz AS after_expected, \
                 split_part(v, '|', 4)::int8 AS after_id \
               FROM (SELECT current_setting({cursor}, true) AS v) AS setting \
               WHERE v <> '' AND split_part(v, '|', 1)::int8 > {now_ms} - {CURSOR_LIFETIME_MS}), \
             taken AS MATERIALIZED ( \
               SELECT array_agg(ctid) AS rows, count(*) AS n, \
                 (array_agg(schedule_at))[count(*)::int4] AS last_schedule, \
                 (array_agg(expected))[count(*)::int4] AS last_expected, \
                 (array_agg(id))[count(*)::int4] AS last_id \
               FROM ( \
                 SELECT ctid, id, schedule_at, COALESCE(expected_at, 'infinity') AS expected \
                 FROM {t} WHERE {after_cursor} \
                 ORDER BY {DEQUEUE_ORDER} LIMIT $2 FOR UPDATE SKIP LOCKED) AS next), \
             moved AS MATERIALIZED ( \
               SELECT set_config({cursor}, \
                 CASE WHEN n = $2 AND ( \
                   SELECT id FROM {t} WHERE {after_taken} ORDER BY {DEQUEUE_ORDER} LIMIT 1 \
                 ) IS NOT NULL \
                   THEN COALESCE((SELECT since FROM cursor), {now_ms}) || '|' || last_schedule \
                     || '|' || last_expected || '|' || last_id \
                   ELSE '' END, false) \
               FROM taken) \
             UPDATE {t} AS j SET state = 'running', attempts = j.attempts + 1, \
               dequeued_at = statement_timestamp(), \
               locked_until = statement_timestamp() + $3 * interval '1 microsecond' \
             WHERE j.ctid = ANY ((SELECT rows FROM taken, moved)::tid[]) \
             RETURNING {}",
            job_columns("j")
        );
        // Completion, failure and renewal are fenced: they touch a job only while it is still
        // running the attempt the caller claimed, never after a rescue handed it to another.
        //
        // `COALESCE(j.state = 'running', false)` is `j.state = 'running'` in a form the planner
        // cannot estimate from the table's statistics. Those are taken while hardly any job
        // runs, so read literally the test looks like it matches no row, and the planner then
        // scans every running job (or the whole table) once per id of the batch: seconds for a
        // batch of a thousand. Left opaque, each id is looked up by primary key.
        let claims = "unnest($1::int8[], $2::int4[]) AS f(id, attempt)";
        let held =
            "j.id = f.id AND j.attempts = f.attempt AND COALESCE(j.state = 'running', false)";
        let fenced = format!("FROM {claims} WHERE {held}");
        // The ids these statements touched, as one array: one row to send and decode, not one
        // a job.
        let touched = |statement: String| {
            format!(
                "WITH touched AS ({statement} RETURNING j.id) \
                 SELECT COALESCE(array_agg(id), '{{}}') FROM touched"
            )
        };
        let done = "state = 'done', locked_until = NULL, finished_at = statement_timestamp()";
        let complete_delete = touched(format!("DELETE FROM {t} AS j USING {claims} WHERE {held}"));
        let complete_keep = touched(format!("UPDATE {t} AS j SET {done} {fenced}"));
        // The worker's batches find their rows by the `ctid` their claim returned, a TID scan
        // per job rather than a primary key lookup; a renewed lease moved the row, and the
        // caller completes the jobs this misses by id.
        let located = "unnest($1::int8[], $2::int4[], $3::tid[]) AS f(id, attempt, row)";
        let complete_delete_by_row = touched(format!(
            "DELETE FROM {t} AS j USING {located} WHERE j.ctid = f.row AND {held}"
        ));
        let complete_keep_by_row = touched(format!(
            "UPDATE {t} AS j SET {done} FROM {located} WHERE j.ctid = f.row AND {held}"
        ));
        let fail = format!(
            "UPDATE {t} AS j SET \
               state = CASE WHEN $4::int8 IS NULL THEN 'failed' ELSE 'queued' END, \
               schedule_at = CASE WHEN $4::int8 IS NULL THEN j.schedule_at \
                 ELSE statement_timestamp() + $4 * interval '1 microsecond' END, \
               finished_at = CASE WHEN $4::int8 IS NULL THEN statement_timestamp() END, \
               locked_until = NULL, last_error = $3, \
               errors = COALESCE(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object( \
                 'attempt', j.attempts, 'error', $3::text, 'at', statement_timestamp())) \
             {fenced} RETURNING j.id"
        );
        let renew = touched(format!(
            "UPDATE {t} AS j SET locked_until = statement_timestamp() + $3 * interval '1 microsecond' \
             {fenced}"
        ));
        // A job whose worker stopped renewing its lease goes back to the queue, its attempt
        // counted. Returns the queues of the rescued jobs, to wake their workers.
        let rescue = format!(
            "WITH lost AS (SELECT id FROM {t} \
               WHERE state = 'running' AND locked_until < statement_timestamp() \
               ORDER BY locked_until LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE {t} AS j SET state = 'queued', locked_until = NULL, \
               last_error = $2, \
               errors = COALESCE(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object( \
                 'attempt', j.attempts, 'error', $2::text, 'at', statement_timestamp())) \
             FROM lost WHERE j.id = lost.id RETURNING j.q_name"
        );
        // Gives claimed jobs back untouched (a worker shutting down before it ran them): the
        // attempt did not happen, so it is not counted.
        let release = touched(format!(
            "UPDATE {t} AS j SET state = 'queued', locked_until = NULL, attempts = j.attempts - 1 \
             {fenced}"
        ));
        Self {
            notify: "SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q".to_owned(),
            channel: table.channel(),
            // Run by a consumer about to wait: registers it, so that inserts notify, and
            // says how long it may wait (see `migrations/0003_notify_only_waiters.sql`).
            next_due: format!("SELECT {}($1)", table.qualified_derived("wait")),
            len: format!(
                "SELECT count(*) FROM {t} \
                 WHERE q_name = $1 AND state = 'queued' AND schedule_at <= statement_timestamp()"
            ),
            clear: format!("DELETE FROM {t} WHERE q_name = $1"),
            update_data: format!("UPDATE {t} SET data = $2::json WHERE id = $1"),
            migrations_table: table.qualified_derived("migrations"),
            put,
            put_many,
            get,
            claim,
            complete_delete,
            complete_keep,
            complete_delete_by_row,
            complete_keep_by_row,
            fail,
            renew,
            rescue,
            release,
            table,
        }
    }
}

/// The columns of a job, in the order [`crate::job::Job`] decodes them, from table alias `j`.
fn job_columns(j: &str) -> String {
    format!(
        "{j}.id, {j}.q_name, {j}.task, {j}.data::text AS data, {j}.attempts, {j}.enqueued_at, \
         NULLIF({j}.schedule_at, '-infinity') AS schedule_at, {j}.expected_at, {j}.ctid"
    )
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
        let sql = render_migration(
            "CREATE TABLE {{table}}; {{name:idx}} {{qualified:notify}} {{channel}} \
             {{literal:waiting}} {{wait_lock}} {{dollar}}",
            &table,
        );
        assert_eq!(
            sql,
            format!(
                "CREATE TABLE \"s\".\"q\"; \"q_idx\" \"s\".\"q_notify\" '{}' \
                 '\"s\".\"q_waiting\"' {} $pq0$",
                table.channel(),
                table.wait_lock_key()
            )
        );
        let awkward = TableName::new(Some("a$pq0$b"), "q").unwrap();
        assert_eq!(render_migration("{{dollar}}", &awkward), "$pq1$");
        let percent = TableName::new(Some("50%s"), "q's").unwrap();
        assert_eq!(
            render_migration("{{format:waiting_%s}}", &percent),
            "'\"50%%s\".\"q''s_waiting_%s\"'"
        );
    }
}
