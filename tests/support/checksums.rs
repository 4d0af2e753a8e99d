//! Checksums of the read models, to compare them with a rebuild from scratch.

use sqlx::PgPool;

/// Checksum (md5) and row count of a table's contents in a canonical order.
async fn checksum(pool: &PgPool, table: &str, columns: &str, order: &str) -> (String, i64) {
    sqlx::query_as(&format!(
        "SELECT md5(coalesce(string_agg(row({columns})::text, E'\\n' ORDER BY {order}), '')), count(*)
           FROM {table}"
    ))
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("checksumming {table}: {e}"))
}

/// Every read-model table: name, the columns that are a function of the log, sort order.
/// (`read_cursors.updated_at` is wall-clock bookkeeping, not state.)
pub const TABLES: [(&str, &str, &str); 5] = [
    ("users_view", "*", "user_id"),
    ("rooms_view", "*", "room_id"),
    ("room_members", "*", "room_id, user_id"),
    ("messages_view", "*", "room_id, seq"),
    (
        "read_cursors",
        "room_id, user_id, last_read_seq",
        "room_id, user_id",
    ),
];

/// Checksums of every read-model table, in [`TABLES`] order.
pub async fn dump_all(pool: &PgPool) -> Vec<(String, i64)> {
    let mut sums = Vec::new();
    for (table, columns, order) in TABLES {
        let columns = if columns == "*" {
            format!("{table}.*")
        } else {
            columns.to_owned()
        };
        sums.push(checksum(pool, table, &columns, order).await);
    }
    sums
}
