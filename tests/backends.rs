//! One behaviour suite for both refresh-token backends (redb and PostgreSQL).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::pg::TestDb;

#[test]
fn each_test_gets_its_own_empty_database() {
    let (a, b) = (TestDb::new(), TestDb::new());
    assert_ne!(a.url, b.url);
    a.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)");
    assert_eq!(a.query_text("SELECT x FROM t").as_deref(), Some("7"));
    assert_eq!(
        b.query_text("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
            .as_deref(),
        Some("0")
    );
}
