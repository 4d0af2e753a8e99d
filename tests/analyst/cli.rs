//! The administrative commands: `projections status`, `projections rebuild`, `users grant`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_status_and_rebuild_work_through_the_cli() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    seed_history(&app, &db, 0).await;
    let head = caught_up(&app.read_models).await;
    let before = dump_all(&db.pool).await;

    let output = run(parley(&db).args(["projections", "status"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let table = String::from_utf8(output.stdout).expect("utf-8");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        vec!["projection", "checkpoint", "lag", "events", "lag", "ms"]
    );
    for (row, name) in rows[1..].iter().zip(["users", "rooms", "messages"]) {
        assert_eq!(row, &vec![name, &head.to_string(), "0", "0"]);
    }

    let output = run(parley(&db).args(["projections", "rebuild", "messages"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        said.starts_with(&format!("rebuilt messages (at position {head})")),
        "{said}"
    );
    assert!(output.stderr.is_empty(), "{:?}", stderr_lines(&output));
    let output = run(parley(&db).args(["projections", "rebuild"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    caught_up(&app.read_models).await;
    assert_eq!(dump_all(&db.pool).await, before);

    let output = run(parley(&db).args(["projections", "rebuild", "nope"]));
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&output),
        vec!["parley: unknown projection \"nope\" (expected users, rooms or messages)"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_grant_gives_a_role_through_the_cli() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let ann = register(&app, "ann").await;

    let output = run(parley(&db).args(["users", "grant", "ann", "analyst"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "granted analyst to ann\n"
    );
    let output = run(parley(&db).args(["users", "grant", "ann", "admin"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    caught_up(&app.read_models).await;
    let user = app
        .read_models
        .user(ann)
        .await
        .expect("user")
        .expect("exists");
    assert_eq!(user.roles, vec!["analyst".to_owned(), "admin".to_owned()]);
    let granted: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload::jsonb::json FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(ann.to_string())
    .fetch_all(&db.pool)
    .await
    .expect("events");
    assert_eq!(
        granted[1],
        (
            "RoleGranted".to_owned(),
            json!({"RoleGranted": {"role": "analyst"}})
        )
    );

    for (args, code, message) in [
        (
            ["users", "grant", "ann", "analyst"],
            1,
            "parley: ann already has the role analyst",
        ),
        (
            ["users", "grant", "nobody", "analyst"],
            1,
            "parley: no user is registered as \"nobody\"",
        ),
        (
            ["users", "grant", "ann", "root"],
            2,
            "parley: unknown role \"root\" (expected analyst or admin)",
        ),
    ] {
        let output = run(parley(&db).args(args).env("RUST_LOG", "off"));
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        assert_eq!(stderr_lines(&output), vec![message.to_owned()], "{args:?}");
    }
    app.stop().await;
}
