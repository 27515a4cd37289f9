//! Every statement pq runs, rendered once per table from validated, quoted identifiers.
//! Values are always bound parameters; only identifiers are spliced in, here and nowhere else.

use crate::error::{Error, Result};

/// The dequeue order. It matches the dequeue index column for column, so a `get` (and the claim,
/// `migrations/0009_claim_with_a_cached_plan.sql`) reads the index in order and stops after the
/// rows it takes. A job expected at no time sorts as if expected at infinity, after every job
/// that is expected.
const DEQUEUE_ORDER: &str = "schedule_at, COALESCE(expected_at, 'infinity'), id";

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

    /// The prefix of the settings that hold a connection's claim cursors, one a queue (see
    /// `migrations/0009_claim_with_a_cached_plan.sql`).
    pub fn claim_cursor(&self) -> String {
        format!("pq.claim_{:016x}_", fnv1a(self.qualified().as_bytes()))
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
            None if key == "claim_cursor" => quote_literal(&table.claim_cursor()),
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
        // A claim from a cursor, in a function so that its plan is made once per connection
        // (see `migrations/0009_claim_with_a_cached_plan.sql`).
        let claim = format!(
            "SELECT * FROM {}($1, $2, $3)",
            table.qualified_derived("claim")
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
/// The claim function (`migrations/0009_claim_with_a_cached_plan.sql`) returns the same.
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
