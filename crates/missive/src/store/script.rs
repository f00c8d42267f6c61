//! Write scripts: several statements committed atomically in one round trip to the database.
//!
//! A transaction of `n` statements costs `n + 2` round trips (`BEGIN`, each statement,
//! `COMMIT`); on SQLite each is a hop to sqlx's worker thread and back, on PostgreSQL a
//! network exchange with a backend. A room commit is the serial step of a room, so those
//! hops bound its throughput. A script sends the whole transaction at once:
//! - SQLite runs `BEGIN IMMEDIATE; s1; …; COMMIT` as one multi-statement query;
//! - PostgreSQL runs `WITH s1 AS (…), … sn`: one statement, atomic on its own.
//!
//! The PostgreSQL form sets the rule for every script: all statements see the database as it
//! was before the script, and no two statements may touch the same row. (PostgreSQL runs the
//! parts of a `WITH` on one snapshot, in no defined order.) Callers merge what would touch a
//! row twice into one statement.

use sqlx::{AnyPool, any::AnyArguments};

use super::{Backend, Params, Store, StoreResult, sql};

/// PostgreSQL takes at most 65,535 parameters per statement; a bigger script is cut into
/// several statements inside one transaction.
const MAX_PG_PARAMS: usize = 30_000;

/// A value bound to a script's parameter.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

/// One statement of a script: its text, with `?` for each parameter, and its values.
#[derive(Debug, Default)]
pub(crate) struct Statement {
    text: String,
    args: Vec<Arg>,
}

impl Statement {
    /// Binds the next parameter.
    pub(crate) fn bind(&mut self, value: impl Into<Arg>) -> &mut Self {
        self.args.push(value.into());
        self
    }
}

/// Statements to commit together (see the module's rules).
#[derive(Debug, Default)]
pub(crate) struct Script {
    statements: Vec<Statement>,
}

/// `(?, …), (?, …)`: `rows` rows of `columns` parameters, for a multi-row `VALUES`.
pub(crate) fn rows(rows: usize, columns: usize) -> String {
    // Scripts are written with `?`, which is SQLite's form; `assemble` numbers them for
    // PostgreSQL.
    Params::new(Backend::Sqlite).rows(rows, columns)
}

/// `?, ?, …`: `count` parameters, for an `IN` list.
pub(crate) fn list(count: usize) -> String {
    Params::new(Backend::Sqlite).list(count)
}

impl Script {
    /// Appends a statement, written with `?` for its parameters, whose values the caller
    /// binds next, in text order.
    pub(crate) fn push(&mut self, text: impl Into<String>) -> &mut Statement {
        self.statements.push(Statement { text: text.into(), args: Vec::new() });
        self.statements.last_mut().expect("just pushed")
    }

    /// Commits every statement, or none.
    pub(crate) async fn run(self, store: &Store) -> StoreResult<()> {
        if self.statements.is_empty() {
            return Ok(());
        }
        match store.backend {
            Backend::Sqlite => run_sqlite(&store.write, self.statements).await,
            Backend::Postgres => run_postgres(&store.write, self.statements).await,
        }
    }
}

/// The statements' texts, their `?` numbered for the backend, and their values, moved into
/// one argument list.
fn assemble(backend: Backend, statements: Vec<Statement>) -> (Vec<String>, AnyArguments) {
    use sqlx::Arguments;
    let mut params = Params::new(backend);
    let mut args = AnyArguments::default();
    let mut texts = Vec::with_capacity(statements.len());
    for statement in statements {
        let text = match backend {
            Backend::Sqlite => statement.text,
            Backend::Postgres => {
                let mut out = String::with_capacity(statement.text.len() + statement.args.len() * 3);
                for (i, part) in statement.text.split('?').enumerate() {
                    if i > 0 {
                        out.push_str(&params.next());
                    }
                    out.push_str(part);
                }
                out
            }
        };
        texts.push(text);
        for arg in statement.args {
            // Encoding an integer or a string into the Any buffer cannot fail.
            let _ = match arg {
                Arg::Int(v) => args.add(v),
                Arg::Text(v) => args.add(v),
            };
        }
    }
    (texts, args)
}

async fn run_sqlite(pool: &AnyPool, statements: Vec<Statement>) -> StoreResult<()> {
    let (texts, args) = assemble(Backend::Sqlite, statements);
    let text = format!("BEGIN IMMEDIATE;\n{};\nCOMMIT", texts.join(";\n"));
    let mut conn = pool.acquire().await?;
    // Run to the end even if the caller goes away: a transaction left open on the one
    // write connection would block every later write.
    let task = tokio::spawn(async move {
        let result = sqlx::query_with(sql(text), args).execute(&mut *conn).await;
        if result.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
            // The statement failed at COMMIT and SQLite already rolled back; should a
            // transaction somehow remain, a new connection replaces this one.
            conn.close_on_drop();
        }
        result.map(|_| ())
    });
    match task.await {
        Ok(result) => Ok(result?),
        Err(e) => {
            tracing::error!(error = %e, "write script task failed");
            Err(sqlx::Error::WorkerCrashed.into())
        }
    }
}

async fn run_postgres(pool: &AnyPool, statements: Vec<Statement>) -> StoreResult<()> {
    let mut chunks: Vec<Vec<Statement>> = vec![Vec::new()];
    let mut params = 0;
    for statement in statements {
        let current = chunks.last_mut().expect("never empty");
        if !current.is_empty() && params + statement.args.len() > MAX_PG_PARAMS {
            chunks.push(Vec::new());
            params = 0;
        }
        params += statement.args.len();
        chunks.last_mut().expect("never empty").push(statement);
    }
    let query = |chunk: Vec<Statement>| {
        let (mut texts, args) = assemble(Backend::Postgres, chunk);
        let last = texts.pop().expect("a chunk is never empty");
        let text = if texts.is_empty() {
            last
        } else {
            let ctes: Vec<String> = texts.iter().enumerate().map(|(i, t)| format!("s{i} AS ({t})")).collect();
            format!("WITH {} {last}", ctes.join(", "))
        };
        sqlx::query_with(sql(text), args)
    };
    if chunks.len() == 1 {
        let chunk = chunks.pop().expect("one chunk");
        query(chunk).execute(pool).await?;
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for chunk in chunks {
        query(chunk).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_numbers_parameters_across_statements() {
        let script = || {
            let mut script = Script::default();
            script.push("INSERT INTO a (x, y) VALUES (?, ?)").bind(1i64).bind("one");
            script.push(format!("INSERT INTO b (z) VALUES {}", rows(2, 1))).bind(2i64).bind(3i64);
            script.statements
        };
        let (texts, _) = assemble(Backend::Postgres, script());
        assert_eq!(texts, ["INSERT INTO a (x, y) VALUES ($1, $2)", "INSERT INTO b (z) VALUES ($3), ($4)"]);
        let (texts, _) = assemble(Backend::Sqlite, script());
        assert_eq!(texts[1], "INSERT INTO b (z) VALUES (?), (?)");
    }
}
