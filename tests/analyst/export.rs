//! `parley events export`: every event in position order, byte-identical reruns, each
//! filter, ranges stable under concurrent writers, no whole-looking file after a failure, and
//! the read pages' boundaries and quoting.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_every_event_of_the_store_in_position_order() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    seed_history(&app, &db, 12_000).await;
    let scratch = Scratch::new();
    let file = scratch.path("events.jsonl");

    let output = run(parley(&db)
        .args(["events", "export", "--output"])
        .arg(&file));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(
        output.stdout.is_empty(),
        "with --output nothing goes to stdout"
    );
    assert_eq!(
        scratch.entries(),
        vec!["events.jsonl"],
        "no temporary file is left"
    );
    let bytes = std::fs::read(&file).expect("export file");
    let exported = lines(&bytes);
    let stored = stored_lines(&db.pool).await;

    assert_eq!(exported.len(), stored.len(), "count");
    assert_eq!(
        positions_of(&exported),
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "every position, in order"
    );
    for (line, expected) in exported.iter().zip(&stored) {
        assert_eq!(
            line, expected,
            "content at position {}",
            expected["position"]
        );
    }
    // Keys in their fixed order, and the secret nowhere.
    let text = String::from_utf8(bytes).expect("utf-8");
    let first = text.lines().next().expect("a line");
    let mut at = 0;
    for key in [
        "\"position\":",
        "\"aggregateType\":",
        "\"aggregateId\":",
        "\"sequence\":",
        "\"eventType\":",
        "\"eventVersion\":",
        "\"payload\":",
        "\"metadata\":",
        "\"recordedAt\":",
    ] {
        let found = first[at..]
            .find(key)
            .unwrap_or_else(|| panic!("{key} after {at} in {first}"));
        at += found + key.len();
    }
    // Payload and metadata are canonical JSON (compact, sorted keys) whatever their stored
    // form: the bulk rows were stored with spaces and in insertion order.
    for (raw, line) in text.lines().zip(&exported) {
        for key in ["payload", "metadata"] {
            let canonical = format!(
                "\"{key}\":{}",
                serde_json::to_string(&line[key]).expect("JSON")
            );
            assert!(raw.contains(&canonical), "{key} not canonical in {raw}");
        }
    }
    assert!(!text.contains(SECRET_HASH), "password hashes are redacted");
    assert_eq!(
        text.matches("\"password_hash\":\"[redacted]\"").count(),
        2,
        "both registrations show the redaction"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exports_of_the_same_range_are_byte_identical_in_both_formats() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    seed_history(&app, &db, 6_000).await;
    let scratch = Scratch::new();

    let first = export(&db, &[]);
    let second = export(&db, &[]);
    assert!(!first.is_empty());
    assert_eq!(first, second, "JSONL, twice");
    let file = scratch.path("again.jsonl");
    let output = run(parley(&db).args(["events", "export", "-o"]).arg(&file));
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        std::fs::read(&file).expect("file"),
        first,
        "file and stdout agree"
    );

    let csv = export(&db, &["--format", "csv", "--from", "3", "--to", "5000"]);
    assert_eq!(
        csv,
        export(&db, &["--format", "csv", "--from", "3", "--to", "5000"]),
        "CSV, twice"
    );
    let text = String::from_utf8(csv).expect("utf-8");
    let mut rows = text.lines();
    assert_eq!(
        rows.next(),
        Some("position,aggregateType,aggregateId,sequence,eventType,eventVersion,payload,metadata,recordedAt")
    );
    // The CSV rows hold the same events as the JSONL lines.
    let jsonl = lines(&export(&db, &["--from", "3", "--to", "5000"]));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("csv row")).collect();
    assert_eq!(records.len(), jsonl.len());
    for (record, line) in records.iter().zip(&jsonl) {
        assert_eq!(record[0].parse::<i64>().ok(), line["position"].as_i64());
        assert_eq!(&record[4], line["eventType"].as_str().expect("type"));
        let payload: Value = serde_json::from_str(&record[6]).expect("payload is JSON text");
        assert_eq!(payload, line["payload"]);
        let metadata: Value = serde_json::from_str(&record[7]).expect("metadata is JSON text");
        assert_eq!(metadata, line["metadata"]);
        assert_eq!(&record[8], line["recordedAt"].as_str().expect("recordedAt"));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_export_filter_selects_exactly_its_events() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let history = seed_history(&app, &db, 0).await;
    let all = stored_lines(&db.pool).await;
    let select = |keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        all.iter().filter(|l| keep(l)).cloned().collect()
    };

    assert_eq!(
        lines(&export(&db, &["--from", "4", "--to", "9"])),
        select(&|l| (4..=9).contains(&l["position"].as_i64().unwrap_or(0))),
        "inclusive position range"
    );
    assert_eq!(
        positions_of(&lines(&export(&db, &["--from", "7", "--to", "7"]))),
        vec![7]
    );
    assert_eq!(
        lines(&export(&db, &["--aggregate-type", "User"])),
        select(&|l| l["aggregateType"] == "User"),
        "aggregate type"
    );
    let room = history.room.to_string();
    let by_room = lines(&export(&db, &["--aggregate-id", &room]));
    assert_eq!(
        by_room,
        select(&|l| l["aggregateId"] == room.as_str()),
        "aggregate id"
    );
    assert_eq!(
        by_room,
        lines(&export(
            &db,
            &["--aggregate-type", "Room", "--aggregate-id", &room]
        )),
        "with or without its type"
    );
    assert!(
        export(&db, &["--aggregate-type", "User", "--aggregate-id", &room]).is_empty(),
        "an id under the wrong type matches nothing"
    );
    let messages = lines(&export(&db, &["--event-type", "MessageSent"]));
    assert_eq!(messages.len(), 20);
    assert_eq!(
        messages,
        select(&|l| l["eventType"] == "MessageSent"),
        "one event type"
    );
    assert_eq!(
        lines(&export(
            &db,
            &["--event-type", "MemberJoined", "--event-type", "MemberLeft"]
        )),
        select(&|l| l["eventType"] == "MemberJoined" || l["eventType"] == "MemberLeft"),
        "several event types"
    );
    let other = history.other_room.to_string();
    assert_eq!(
        lines(&export(
            &db,
            &[
                "--aggregate-id",
                &other,
                "--event-type",
                "MessageSent",
                "--from",
                "10",
                "--format",
                "jsonl"
            ]
        )),
        select(&|l| l["aggregateId"] == other.as_str()
            && l["eventType"] == "MessageSent"
            && l["position"].as_i64().unwrap_or(0) >= 10),
        "filters combine"
    );
    assert!(
        export(&db, &["--from", "1000"]).is_empty(),
        "beyond the head: empty"
    );
    assert!(
        export(&db, &["--aggregate-id", "no-such-aggregate"]).is_empty(),
        "an id no aggregate has: empty"
    );
    assert_eq!(
        export(&db, &["--aggregate-id", "no-such-aggregate", "--format", "csv"]),
        b"position,aggregateType,aggregateId,sequence,eventType,eventVersion,payload,metadata,recordedAt\n",
        "an empty CSV export still has its header"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_of_a_range_is_the_same_before_and_while_events_are_written() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let history = seed_history(&app, &db, 6_000).await;
    let head = caught_up(&app.read_models).await;
    let range = ["--from", "2", "--to", &head.to_string()].map(str::to_owned);
    let before = export(&db, &range.iter().map(String::as_str).collect::<Vec<_>>());

    // Writers keep committing (slowly and fast) while the exports run.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3 {
        let bus = app.commands.clone();
        let (stop, written) = (stop.clone(), written.clone());
        let (room, sender) = (history.room, history.ann);
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                bus.send_message(
                    room,
                    sender,
                    "during the export",
                    &format!("w{w}-{i}"),
                    &meta(),
                )
                .await
                .expect("send during export");
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    support::eventually("the writers are writing", || async {
        written.load(Ordering::Relaxed) >= 20
    })
    .await;
    for _ in 0..3 {
        let db_url = db.url();
        let range = range.clone();
        let during = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_parley"))
                .args(["events", "export"])
                .args(&range)
                .env("DATABASE_URL", db_url)
                .stdin(Stdio::null())
                .output()
                .expect("export")
        })
        .await
        .expect("export task");
        assert_eq!(during.status.code(), Some(0));
        assert!(
            during.stdout == before,
            "the range [2, {head}] changed while writing"
        );
    }
    // An open-ended export during writes is a gapless prefix of the log.
    let open = export(&db, &[]);
    let positions = positions_of(&lines(&open));
    assert!(positions.len() as i64 >= head);
    assert_eq!(positions, (1..=positions.len() as i64).collect::<Vec<_>>());
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(written.load(Ordering::Relaxed) > 0, "writers were writing");
    caught_up(&app.read_models).await;
    assert_eq!(
        export(&db, &range.iter().map(String::as_str).collect::<Vec<_>>()),
        before,
        "and after"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_leaves_no_file_that_looks_whole() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    let file = scratch.path("events.jsonl");
    // The store is unreachable: the export fails at start.
    let output = run(parley(&db)
        .args(["events", "export", "--output"])
        .arg(&file)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("RUST_LOG", "off"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );
    assert!(scratch.entries().is_empty(), "{:?}", scratch.entries());
    // The output's directory does not exist: nothing is created anywhere.
    let nowhere = scratch.path("missing/events.jsonl");
    let output = run(parley(&db)
        .args(["events", "export", "--output"])
        .arg(&nowhere));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );
    assert!(scratch.entries().is_empty());
}

/// The export reads the log in statements of 100,000 positions with the filter's values
/// written into them: positions on both sides of those boundaries, and an aggregate id with
/// a quote and a backslash (of two aggregate types, so it is filtered by id alone), come out
/// exactly as the `events` query gives them.
#[tokio::test]
async fn an_export_crosses_its_read_pages_and_quotes_filter_values() {
    let db = TestDb::new().await;
    let odd = r"it's a \ 'name'";
    let rows: [(i64, &str, &str, i64, &str); 7] = [
        (1, "User", odd, 1, "UserRegistered"),
        (99_999, "Room", "r-1", 1, "RoomCreated"),
        (100_000, "Room", odd, 1, "RoomCreated"),
        (100_001, "Room", "r-1", 2, "MessageSent"),
        (200_000, "Room", odd, 2, "MessageSent"),
        (200_001, "Room", "r-1", 3, "MessageSent"),
        (250_000, "Room", odd, 3, "MessageSent"),
    ];
    for (position, aggregate_type, aggregate_id, sequence, event_type) in rows {
        let payload = if event_type == "UserRegistered" {
            json!({ event_type: { "password_hash": SECRET_HASH, "username": "o'neil" } })
        } else {
            json!({ event_type: { "body": "a \"quoted\" \\ body", "seq": sequence } })
        };
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, position)
             VALUES ($1, $2, $3, $4, '1.0', $5::json, $6::json, $7)",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(event_type)
        .bind(payload.to_string())
        .bind(json!({"request_id": "r'1"}).to_string())
        .bind(position)
        .execute(&db.pool)
        .await
        .expect("inserting a positioned event");
    }
    let log = parley_projections::postgres::PgEventLog::new(db.pool.clone());
    let expected = |filter: &EventFilter| {
        let log = log.clone();
        let filter = filter.clone();
        async move {
            let page = log
                .events(None, Some(1000), &filter)
                .await
                .expect("events page");
            page.events
                .iter()
                .map(|e| {
                    json!({
                        "position": e.position.0,
                        "aggregateType": e.aggregate_type,
                        "aggregateId": e.aggregate_id,
                        "sequence": e.sequence,
                        "eventType": e.event_type,
                        "eventVersion": e.event_version,
                        "payload": e.payload,
                        "metadata": e.metadata,
                        "recordedAt": e.recorded_at_rfc3339(),
                    })
                })
                .collect::<Vec<Value>>()
        }
    };

    let all = lines(&export(&db, &[]));
    assert_eq!(
        positions_of(&all),
        vec![1, 99_999, 100_000, 100_001, 200_000, 200_001, 250_000]
    );
    assert_eq!(all, expected(&EventFilter::all()).await);
    assert_eq!(
        all[0]["payload"]["UserRegistered"]["password_hash"],
        "[redacted]"
    );

    let by_id = lines(&export(&db, &["--aggregate-id", odd]));
    assert_eq!(positions_of(&by_id), vec![1, 100_000, 200_000, 250_000]);
    let filter = EventFilter::parse(None, None, None, Some(odd), &[]).expect("filter");
    assert_eq!(by_id, expected(&filter).await);

    let ranged = lines(&export(
        &db,
        &[
            "--from",
            "100000",
            "--to",
            "200000",
            "--aggregate-type",
            "Room",
            "--aggregate-id",
            odd,
            "--event-type",
            "MessageSent",
        ],
    ));
    assert_eq!(positions_of(&ranged), vec![200_000]);

    let csv = export(
        &db,
        &["--format", "csv", "--from", "99999", "--to", "200001"],
    );
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let positions: Vec<String> = reader
        .records()
        .map(|r| r.expect("a CSV row")[0].to_owned())
        .collect();
    assert_eq!(positions, ["99999", "100000", "100001", "200000", "200001"]);
}
