//! What a database operation can end in, and how it reaches the caller.

use switchboard_bus::proto::ErrorCode;

/// A failed database operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database could not be reached (or kept failing transiently) before the
    /// request's deadline. The caller may retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The parameters break a limit of the schema.
    #[error("{0}")]
    Invalid(String),
    /// The database refused the statement for another reason (a bug: logged).
    #[error("database error: {0}")]
    Query(String),
}

impl From<DbError> for switchboard_bus::Error {
    fn from(e: DbError) -> Self {
        let code = match e {
            DbError::Unavailable(_) => ErrorCode::Unavailable,
            DbError::Invalid(_) => ErrorCode::BadRequest,
            DbError::Query(_) => ErrorCode::Internal,
        };
        switchboard_bus::Error::new(code, e.to_string())
    }
}

/// Whether an error may go away by itself: a lost or refused connection, a
/// deadlock, a lock wait timeout, too many connections, a server shutting down.
pub fn is_transient(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
        mysql_async::Error::Server(s) => matches!(
            s.code,
            // 1062 (duplicate key): only the idempotent chat insert can raise it,
            // when another transaction stored the same key first; the retry's
            // lookup then finds that row.
            1205 | 1213
                | 1040
                | 1053
                | 1077
                | 1927
                | 2002
                | 2003
                | 2006
                | 2013
                | 1614
                | 1180
                | 1062
        ),
        _ => e.is_fatal(),
    }
}
