//! [`Pq`], the handle on one queue table, and its [`PqBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::connections::Connections;
use crate::enqueue::OnConnection;
use crate::error::Result;
use crate::listen::Listener;
use crate::queue::Queue;
use crate::sql::{Statements, TableName};

/// How long a pooled connection sits idle before it is checked with a round trip when next
/// handed out.
const IDLE_BEFORE_CHECK: Duration = Duration::from_secs(1);

/// The default time a blocking [`get`](Queue::get) waits for a job.
pub const DEFAULT_GET_TIMEOUT: Duration = Duration::from_secs(1);

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
    sql: Arc<Statements>,
    listener: Listener,
    get_timeout: Duration,
}

impl Pq {
    /// Connects to `url` with the default table `queue` in the connection's search path.
    pub async fn connect(url: &str) -> Result<Pq> {
        Pq::builder().connect(url).await
    }

    /// Like [`connect`](Pq::connect), but connects only when first used.
    pub fn connect_lazy(url: &str) -> Result<Pq> {
        Pq::builder().connect_lazy(url)
    }

    /// Uses an application's pool, with the default table `queue`.
    pub fn from_pool(pool: PgPool) -> Pq {
        Pq::builder()
            .from_pool(pool)
            .expect("the default table name is valid")
    }

    /// Configures the table, schema, pool size and default timeout.
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

    /// Creates the table, or brings it up to date, from the migrations in pq's `migrations/`
    /// folder, recording what was applied. Idempotent, and safe to run from several processes
    /// at once.
    pub async fn create(&self) -> Result<()> {
        crate::migrate::run(self.pool(), &self.inner.sql).await
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

    /// Runs pq's own `statements` on a connection kept warm between them (see
    /// [`Connections`]): kept for the next statements if these succeeded, back to the pool if
    /// they failed.
    pub(crate) async fn with_connection<T>(
        &self,
        statements: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        let mut connection = self.inner.connections.acquire().await?;
        let output = statements(&mut connection).await?;
        connection.keep();
        Ok(output)
    }

    /// This table, bound to a connection of the caller's, for example one inside the caller's
    /// own sqlx transaction (`pq.on(&mut *tx)`), to enqueue tasks there.
    pub fn on<'c>(&'c self, connection: &'c mut PgConnection) -> OnConnection<'c> {
        OnConnection::new(&self.inner.sql, connection)
    }

    /// The table, as written in SQL: `"schema"."table"` or `"table"`.
    pub fn table(&self) -> String {
        self.inner.sql.table.qualified()
    }

    pub(crate) fn sql(&self) -> &Arc<Statements> {
        &self.inner.sql
    }

    pub(crate) fn listener(&self) -> &Listener {
        &self.inner.listener
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
}

impl Default for PqBuilder {
    fn default() -> Self {
        Self {
            schema: None,
            table: "queue".to_owned(),
            max_connections: 10,
            get_timeout: DEFAULT_GET_TIMEOUT,
        }
    }
}

impl PqBuilder {
    /// The schema of the table (default: the first of the connection's search path).
    /// [`Pq::create`] creates it if needed.
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = Some(schema.to_owned());
        self
    }

    /// The table's name (default `queue`, at most 48 bytes).
    pub fn table(mut self, table: &str) -> Self {
        self.table = table.to_owned();
        self
    }

    /// The size of the pool that [`connect`](PqBuilder::connect) opens (default 10).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// How long [`Queue::get`] waits for a job by default (1 s).
    pub fn get_timeout(mut self, timeout: Duration) -> Self {
        self.get_timeout = timeout;
        self
    }

    /// Connects a pool to `url`.
    pub async fn connect(self, url: &str) -> Result<Pq> {
        let options: PgConnectOptions = url.parse()?;
        let pool = self.pool_options().connect_with(options).await?;
        self.from_pool(pool)
    }

    /// A pool that connects to `url` when first used.
    pub fn connect_lazy(self, url: &str) -> Result<Pq> {
        let options: PgConnectOptions = url.parse()?;
        let pool = self.pool_options().connect_lazy_with(options);
        self.from_pool(pool)
    }

    /// Uses the application's pool.
    pub fn from_pool(self, pool: PgPool) -> Result<Pq> {
        let table = TableName::new(self.schema.as_deref(), &self.table)?;
        let sql = Arc::new(Statements::new(table));
        let listener = Listener::new(sql.channel.clone(), pool.connect_options().as_ref().clone());
        Ok(Pq {
            inner: Arc::new(Inner {
                connections: Connections::new(pool),
                sql,
                listener,
                get_timeout: self.get_timeout,
            }),
        })
    }

    fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            // Fail fast when the database is down rather than hang a caller.
            .acquire_timeout(Duration::from_secs(5))
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
}
