//! [`Pq`], the handle on one queue table, and its [`PqBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

use crate::connections::{why_no_connection, Connections};
use crate::enqueue::OnConnection;
use crate::error::{Error, Result};
use crate::listen::Listener;
use crate::migrate::LATEST;
use crate::queue::Queue;
use crate::sql::{Statements, TableName};

/// How long a pooled connection sits idle before it is checked with a round trip when next
/// handed out.
const IDLE_BEFORE_CHECK: Duration = Duration::from_secs(1);

/// The default time a blocking [`get`](Queue::get) waits for a job.
pub const DEFAULT_GET_TIMEOUT: Duration = Duration::from_secs(1);

/// The default bound on each of pq's own statements, the wait for a connection included.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on one queue table: cheap to clone, shared by every queue, consumer and worker of
/// the process.
///
/// ```no_run
/// # async fn example() -> Result<(), pq::Error> {
/// let pq = pq::Pq::connect("postgres://postgres@127.0.0.1/test").await?;
/// pq.create().await?; // creates or upgrades the table; safe to run at every start
///
/// let apples = pq.queue("apples");
/// apples.put(&serde_json::json!({"kind": "Cox"})).await?;
/// let job = apples.get().await?.expect("just put");
/// println!("{job}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pq {
    inner: Arc<Inner>,
}

struct Inner {
    connections: Connections,
    /// The table as configured; its schema, when none was, is resolved once (see [`Resolved`]).
    table: TableName,
    resolved: Arc<OnceCell<Resolved>>,
    get_timeout: Duration,
    statement_timeout: Duration,
    /// Set when the pool's URL is a transaction pooler's (see
    /// [`PqBuilder::transaction_pooler`]).
    pooler: Option<Arc<Pooler>>,
    /// The jobs this handle's tasks wait for (see `JobHandle::result`).
    waits: Arc<crate::results::Waits>,
}

/// A transaction pooler between pq and the server.
struct Pooler {
    /// A connection to the server itself, for LISTEN and migrations: `None` polls instead.
    direct: Option<PgConnectOptions>,
}

/// What depends on the table's schema: its statements and its notification channel.
struct Resolved {
    sql: Arc<Statements>,
    listener: Arc<Listener>,
}

impl Pq {
    /// Connects to `url` with the default table `queue`, in the schema the connection's search
    /// path makes current (usually `public`).
    pub async fn connect(url: &str) -> Result<Pq> {
        Pq::builder().connect(url).await
    }

    /// Like [`connect`](Pq::connect), but connects only when first used.
    pub fn connect_lazy(url: &str) -> Result<Pq> {
        Pq::builder().connect_lazy(url)
    }

    /// Uses an application's pool, with the default table `queue`.
    pub async fn from_pool(pool: PgPool) -> Result<Pq> {
        Pq::builder().from_pool(pool).await
    }

    /// Configures the table, schema, pool size and timeouts.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), pq::Error> {
    /// let pq = pq::Pq::builder()
    ///     .schema("jobs")
    ///     .table("queue")
    ///     .max_connections(20)
    ///     .get_timeout(std::time::Duration::from_secs(5))
    ///     .connect("postgres://postgres@127.0.0.1/test")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> PqBuilder {
        PqBuilder::default()
    }

    /// Creates the table, or brings it up to date, from the migrations and function
    /// definitions in pq's `sql/` folder, recording what was applied. Idempotent, safe to run
    /// from several processes at once, and online: no step holds a lock that puts, claims or
    /// completions wait for beyond an instant (see docs/operating.md). A table migrated by a
    /// newer pq is refused with [`Error::SchemaTooNew`].
    pub async fn create(&self) -> Result<()> {
        self.migrate_to(LATEST).await
    }

    /// Applies the migrations up to `version` only (see [`MIGRATIONS`](crate::MIGRATIONS)), to
    /// stage an upgrade: to build a large table's new index at a quiet hour, say. The table's
    /// functions are defined once it reaches [`LATEST`](crate::LATEST), which this pq's workers
    /// need.
    pub async fn migrate_to(&self, version: i64) -> Result<()> {
        let sql = self.statements().await?;
        let options = self.direct_options().ok_or(Error::NoDirectConnection {
            what: "migrating the table",
        })?;
        crate::migrate::run(&options, sql, version).await
    }

    /// The newest migration applied to the table (0 if it has none).
    pub async fn schema_version(&self) -> Result<i64> {
        let sql = self.statements().await?;
        let version = self
            .with_connection("reading the schema version", async |connection| {
                Ok(sql
                    .query_scalar(&sql.schema_version)
                    .fetch_one(connection)
                    .await)
            })
            .await?;
        match version {
            Ok(version) => Ok(version),
            // No migrations table: nothing was ever migrated.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(0),
            Err(error) => Err(error.into()),
        }
    }

    /// Checks that the table has every migration this pq needs ([`Error::SchemaTooOld`]
    /// otherwise), and warns when a newer pq has migrated it since: this one then keeps
    /// working, as migrations only add to what older pqs use, but should be upgraded.
    pub async fn check_schema(&self) -> Result<()> {
        let applied = self.schema_version().await?;
        if applied < LATEST {
            return Err(Error::SchemaTooOld {
                table: self.table(),
                applied,
                needed: LATEST,
            });
        }
        if applied > LATEST {
            tracing::warn!(
                table = %self.table(),
                applied,
                known = LATEST,
                "pq: the table was migrated by a newer pq; upgrade this program"
            );
        }
        Ok(())
    }

    /// A handle on the queue of this name. Any non-empty name works, including spaces, quotes,
    /// unicode and long names; an invalid one (empty, or with a NUL) is refused when used.
    pub fn queue(&self, name: &str) -> Queue {
        Queue::new(self.clone(), name, self.inner.get_timeout)
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        self.inner.connections.pool()
    }

    /// A handle on the same table with a pool of its own of at most `max_connections`, opened
    /// only as they are needed, from the same options: a worker's bookkeeping must never wait
    /// behind its handlers, or the application, for a connection.
    pub fn with_own_pool(&self, max_connections: u32) -> Pq {
        let pool = pool_options(max_connections)
            .connect_lazy_with(self.pool().connect_options().as_ref().clone());
        Pq {
            inner: Arc::new(Inner {
                connections: Connections::new(pool),
                table: self.inner.table.clone(),
                resolved: Arc::clone(&self.inner.resolved),
                get_timeout: self.inner.get_timeout,
                statement_timeout: self.inner.statement_timeout,
                pooler: self.inner.pooler.clone(),
                waits: Arc::default(),
            }),
        }
    }

    pub(crate) fn waits(&self) -> &Arc<crate::results::Waits> {
        &self.inner.waits
    }

    /// Whether the pool's connections go through a transaction pooler (see
    /// [`PqBuilder::transaction_pooler`]).
    pub fn behind_pooler(&self) -> bool {
        self.inner.pooler.is_some()
    }

    /// Whether consumers and workers hear of new jobs by LISTEN: not behind a transaction
    /// pooler without a [`direct_url`](PqBuilder::direct_url), where they poll.
    pub fn listens(&self) -> bool {
        self.inner
            .pooler
            .as_ref()
            .is_none_or(|p| p.direct.is_some())
    }

    /// Where a session of its own (LISTEN, the migrations' lock) connects: the server, past any
    /// pooler. `None` behind a pooler without a direct URL.
    pub(crate) fn direct_options(&self) -> Option<PgConnectOptions> {
        match &self.inner.pooler {
            None => Some(self.pool().connect_options().as_ref().clone()),
            Some(pooler) => pooler.direct.clone(),
        }
    }

    /// Runs pq's own `statements` on a connection kept warm between them (see
    /// [`Connections`]), within the handle's statement timeout (the wait for the connection
    /// included): kept for the next statements if these succeeded, back to the pool if they
    /// failed, closed if they did not finish. Behind a transaction pooler they run in one
    /// transaction, committed if they succeeded: statements that must commit one by one take
    /// a call each.
    pub(crate) async fn with_connection<T>(
        &self,
        what: &'static str,
        statements: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        let in_transaction = self.inner.pooler.is_some();
        let timeout = self.inner.statement_timeout;
        let mut acquired = false;
        let run = async {
            let mut connection = self.inner.connections.acquire().await?;
            acquired = true;
            let output = if in_transaction {
                // sqlx parses a statement and binds it in two exchanges, which a transaction
                // pooler may hand to two server connections unless a transaction holds one.
                // That server connection may hold other clients' prepared statements, whose
                // names sqlx's own would meet (it prepares some to learn a type): dropped
                // first, and ours before it goes back.
                match connection.begin_with("BEGIN; DEALLOCATE ALL").await {
                    Ok(mut tx) => match statements(&mut tx).await {
                        Ok(output) => commit_clean(tx).await.map(|()| output),
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(error.into()),
                }
            } else {
                statements(&mut connection).await
            };
            match output {
                Ok(output) => {
                    connection.keep();
                    Ok(output)
                }
                Err(error) => {
                    connection.finished();
                    Err(self.explain(error))
                }
            }
        };
        let output = tokio::time::timeout(timeout, run).await;
        match output {
            Ok(Err(Error::Database(sqlx::Error::PoolTimedOut))) => {
                Err(self.inner.connections.why_none(what, timeout).await)
            }
            // The pool's own connection failed (TLS, authentication): it says why.
            Ok(Err(Error::Database(error))) if !acquired => Err(Error::Unreachable { what, error }),
            Ok(output) => output,
            Err(_) if !acquired => Err(self.inner.connections.why_none(what, timeout).await),
            Err(_) => Err(Error::Timeout {
                what,
                after: timeout,
            }),
        }
    }

    /// Says what to do about an error of one of pq's own statements, where the database's
    /// message would not.
    fn explain(&self, error: Error) -> Error {
        error.or_no_table(|| self.table())
    }

    /// The bound on each of pq's statements.
    pub(crate) fn statement_timeout(&self) -> Duration {
        self.inner.statement_timeout
    }

    /// Wakes the consumers of these queues, as a put would.
    pub(crate) async fn wake(&self, mut queues: Vec<String>) -> Result<()> {
        if queues.is_empty() {
            return Ok(());
        }
        queues.sort_unstable();
        queues.dedup();
        // A NOTIFY payload is at most 8000 bytes: a longer name wakes every queue.
        for queue in &mut queues {
            if queue.len() >= 8000 {
                queue.clear();
            }
        }
        let sql = self.statements().await?;
        self.with_connection("a notification", async |connection| {
            sql.query(&sql.notify)
                .bind(&sql.channel)
                .bind(&queues)
                .execute(connection)
                .await?;
            Ok(())
        })
        .await
    }

    /// This table, bound to a connection of the caller's, for example one inside the caller's
    /// own sqlx transaction (`pq.on(&mut *tx)`), to enqueue tasks there.
    pub fn on<'c>(&'c self, connection: &'c mut PgConnection) -> OnConnection<'c> {
        OnConnection::new(self, connection)
    }

    /// The table, as written in SQL: `"schema"."table"`. For a handle from
    /// [`connect_lazy`](Pq::connect_lazy) without a schema, `"table"` until its first statement
    /// resolved the schema.
    pub fn table(&self) -> String {
        match self.inner.resolved.get() {
            Some(resolved) => resolved.sql.table.qualified(),
            None => self.inner.table.qualified(),
        }
    }

    /// The statements, once the table's schema is known: given, or else the connections'
    /// current schema, asked once. Resolving it once keeps every statement on one table, where
    /// a search path that the application changes per connection would otherwise move them.
    pub(crate) async fn statements(&self) -> Result<&Arc<Statements>> {
        Ok(&self.resolved().await?.sql)
    }

    pub(crate) async fn listener(&self) -> Result<&Arc<Listener>> {
        Ok(&self.resolved().await?.listener)
    }

    async fn resolved(&self) -> Result<&Resolved> {
        self.inner
            .resolved
            .get_or_try_init(|| async {
                let table = match &self.inner.table.schema {
                    Some(_) => self.inner.table.clone(),
                    None => {
                        let schema = self.current_schema().await?;
                        TableName::new(Some(&schema), &self.inner.table.table)?
                    }
                };
                let sql = Arc::new(Statements::new(table, self.inner.pooler.is_none()));
                let listener = Arc::new(Listener::new(sql.channel.clone(), self.direct_options()));
                Ok::<_, Error>(Resolved { sql, listener })
            })
            .await
    }

    /// The schema the connections' search path makes current.
    async fn current_schema(&self) -> Result<String> {
        let options = self.pool().connect_options();
        let timeout = self.inner.statement_timeout;
        let ask = async {
            let mut connection = PgConnection::connect_with(&options).await?;
            // The simple protocol: one exchange, never prepared, which any pooler passes.
            let row = sqlx::Executor::fetch_one(&mut connection, "SELECT current_schema()").await?;
            let schema: Option<String> = sqlx::Row::try_get(&row, 0)?;
            let _ = connection.close().await;
            Ok::<_, Error>(schema)
        };
        let schema = tokio::time::timeout(timeout, ask)
            .await
            .unwrap_or(Err(Error::Timeout {
                what: "asking for the current schema",
                after: timeout,
            }))?;
        schema.ok_or_else(|| Error::InvalidIdentifier {
            kind: "schema",
            name: String::new(),
            reason: "none was given, and the connection's search path names no schema that exists",
        })
    }
}

impl fmt::Debug for Pq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pq")
            .field("table", &self.table())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Pq`]; see [`Pq::builder`].
#[derive(Debug, Clone)]
pub struct PqBuilder {
    schema: Option<String>,
    table: String,
    max_connections: u32,
    get_timeout: Duration,
    statement_timeout: Duration,
    pooler: bool,
    direct_url: Option<String>,
}

impl Default for PqBuilder {
    fn default() -> Self {
        Self {
            schema: None,
            table: "queue".to_owned(),
            max_connections: 10,
            get_timeout: DEFAULT_GET_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            pooler: false,
            direct_url: None,
        }
    }
}

impl PqBuilder {
    /// The schema of the table (default: the connections' current schema, asked once when
    /// connecting). [`Pq::create`] creates it if needed.
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = Some(schema.to_owned());
        self
    }

    /// The table's name (default `queue`, at most 48 bytes).
    pub fn table(mut self, table: &str) -> Self {
        self.table = table.to_owned();
        self
    }

    /// The size of the pool that [`connect`](PqBuilder::connect) opens (default 10). A worker
    /// does not need room in it: it opens a pool of its own for its bookkeeping and its
    /// handlers' transactions.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// How long [`Queue::get`] waits for a job by default (1 s).
    pub fn get_timeout(mut self, timeout: Duration) -> Self {
        self.get_timeout = timeout;
        self
    }

    /// The bound on each statement pq runs on its own connections, the wait for a connection
    /// included (default 5 s): past it, the call fails with [`Error::Timeout`] and the
    /// connection is closed, so that a server that hangs or a network that drops packets never
    /// holds up an enqueue, a claim or a completion for longer. Statements in your own
    /// transactions are yours to bound.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The URL given to [`connect`](PqBuilder::connect) (or the pool given to
    /// [`from_pool`](PqBuilder::from_pool)) is a transaction pooler's, PgBouncer's with
    /// `pool_mode = transaction` say, which hands each transaction whatever server connection
    /// is free. pq then keeps no session state there: its statements are not kept prepared,
    /// and each call's run in a transaction of their own (three round trips more than on a
    /// direct connection for a call of one statement). LISTEN and migrations need a session:
    /// they connect to
    /// [`direct_url`](PqBuilder::direct_url), or without one, consumers and workers poll (a
    /// worker every [`poll_interval`], a blocking get every second) and
    /// [`Pq::create`] fails with [`Error::NoDirectConnection`]: migrate with `pq migrate`
    /// against the server.
    ///
    /// Your own statements through such a pool (in a handler's `ctx.transaction()`, say) must
    /// not be prepared either: `sqlx::query(..).persistent(false)`, in a transaction, unless
    /// the pooler keeps prepared statements itself (PgBouncer 1.22's
    /// `max_prepared_statements`). So must pq's calls on an executor of yours
    /// ([`Put::execute`](crate::Put::execute), [`Pq::complete`], [`Job::update`](crate::Job::update)):
    /// a transaction, not the pool. A pool given to [`from_pool`](PqBuilder::from_pool) must
    /// not cache statements: `PgConnectOptions::statement_cache_capacity(0)`, as
    /// [`connect`](PqBuilder::connect) sets behind a pooler.
    ///
    /// [`poll_interval`]: https://docs.rs/pq/latest/pq/struct.Worker.html#method.poll_interval
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), pq::Error> {
    /// let pq = pq::Pq::builder()
    ///     .transaction_pooler()
    ///     .direct_url("postgres://app@db.internal:5432/app")
    ///     .connect("postgres://app@pgbouncer.internal:6432/app")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction_pooler(mut self) -> Self {
        self.pooler = true;
        self
    }

    /// The server's own URL, past the [`transaction_pooler`](PqBuilder::transaction_pooler),
    /// for what needs a session: one LISTEN connection per handle, and migrations. Without a
    /// pooler it is a mistake ([`Error::Settings`]), since the pool's URL is then the server's.
    pub fn direct_url(mut self, url: &str) -> Self {
        self.direct_url = Some(url.to_owned());
        self
    }

    /// Connects a pool to `url`, and resolves the table's schema if none was given.
    pub async fn connect(self, url: &str) -> Result<Pq> {
        let options = self.connect_options(url)?;
        let pool = match pool_options(self.max_connections)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => pool,
            Err(sqlx::Error::PoolTimedOut) => {
                return Err(why_no_connection(&options, "connecting", ACQUIRE_TIMEOUT).await)
            }
            Err(error) => {
                return Err(Error::Unreachable {
                    what: "connecting",
                    error,
                })
            }
        };
        self.from_pool(pool).await
    }

    /// A pool that connects to `url` when first used; the schema, if none was given, is
    /// resolved by the first statement.
    pub fn connect_lazy(self, url: &str) -> Result<Pq> {
        let options = self.connect_options(url)?;
        let pool = pool_options(self.max_connections).connect_lazy_with(options);
        self.handle(pool)
    }

    /// Uses the application's pool, and resolves the table's schema if none was given.
    pub async fn from_pool(self, pool: PgPool) -> Result<Pq> {
        let pq = self.handle(pool)?;
        pq.resolved().await?;
        Ok(pq)
    }

    /// `url`'s options. Behind a transaction pooler sqlx keeps no statement prepared, whose
    /// server connection the next transaction may not get.
    fn connect_options(&self, url: &str) -> Result<PgConnectOptions> {
        let options: PgConnectOptions = url.parse()?;
        Ok(match self.pooler {
            true => options.statement_cache_capacity(0),
            false => options,
        })
    }

    fn handle(self, pool: PgPool) -> Result<Pq> {
        let table = TableName::new(self.schema.as_deref(), &self.table)?;
        let pooler =
            match (self.pooler, &self.direct_url) {
                (false, None) => None,
                (false, Some(_)) => return Err(Error::Settings(
                    "a direct URL is the server's own, past a transaction pooler, and no pooler \
                     is set: call transaction_pooler() (the CLI's --transaction-pooler), or \
                     leave the direct URL out",
                )),
                (true, None) => Some(Arc::new(Pooler { direct: None })),
                (true, Some(url)) => Some(Arc::new(Pooler {
                    direct: Some(url.parse()?),
                })),
            };
        Ok(Pq {
            inner: Arc::new(Inner {
                connections: Connections::new(pool),
                table,
                resolved: Arc::default(),
                get_timeout: self.get_timeout,
                statement_timeout: self.statement_timeout,
                pooler,
                waits: Arc::default(),
            }),
        })
    }
}

/// Drops the statements sqlx prepared in `tx`, then commits it.
async fn commit_clean(mut tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
    sqlx::Executor::execute(&mut *tx, "DEALLOCATE ALL").await?;
    tx.commit().await?;
    Ok(())
}

/// How long the pool tries to give out a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Fail fast when the database is down rather than hang a caller.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx checks every connection with a round trip before handing it out, which
        // costs a busy producer a sixth of its enqueues. Check only one that sat idle, as
        // pgx's pool does: a connection in use moments ago is alive, and a server restart
        // is found by the idle check of the connections it dropped.
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_CHECK {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}
