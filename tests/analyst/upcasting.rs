//! Upcasting: an event stored in an old layout still replays and projects.

use super::*;

on_both_apps!(an_old_message_sent_event_still_replays_and_projects);

async fn an_old_message_sent_event_still_replays_and_projects(app: &App) {
    let host = register(app, "veteran").await;
    let room = app
        .commands
        .create_room(host, "legacy", Vec::new(), &meta())
        .await
        .expect("room");
    // A message as Parley 0.9 stored it: `text` instead of `body`, no `client_msg_id`.
    let message_id = uuid::Uuid::now_v7();
    let old = SerializedEvent::new(
        room.to_string(),
        2,
        "Room".to_owned(),
        "MessageSent".to_owned(),
        "0.9".to_owned(),
        json!({"MessageSent": {
            "message_id": message_id,
            "seq": 1,
            "sender": host,
            "text": "written by 0.9",
            "sent_at": "2024-01-01T00:00:00Z"
        }}),
        json!({"request_id": "legacy-fixture"}),
    );
    app.log
        .append_batch(&[old])
        .await
        .expect("append the old event");

    // The aggregate replays it through the upcaster (a fresh store: no cache, no snapshot)…
    let store =
        AggregateStore::<Room>::with_options(app.log.clone(), 16, 250, parley_domain::upcasters());
    let loaded = store
        .load_aggregate(&room.to_string())
        .await
        .expect("replays");
    assert_eq!(
        (loaded.sequence(), loaded.state().last_seq()),
        (2, MessageSeq(1))
    );
    // …and could not without it.
    let bare = AggregateStore::<Room>::with_options(app.log.clone(), 16, 250, Vec::new());
    assert!(bare.load_aggregate(&room.to_string()).await.is_err());

    // New messages follow it, and the projection holds both.
    let sent = app
        .commands
        .send_message(room, host, "written by 1.0", "c-1", &meta())
        .await
        .expect("send after the old event");
    assert_eq!(sent.seq, MessageSeq(2));
    let head = caught_up(&app.read_models).await;
    let page = app
        .read_models
        .messages(
            room,
            PageRequest {
                after: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("history");
    let got: Vec<(u64, &str, &str)> = page
        .messages
        .iter()
        .map(|m| (m.seq.0, m.body.as_str(), m.client_msg_id.as_str()))
        .collect();
    let legacy_id = format!("legacy-{message_id}");
    assert_eq!(
        got,
        vec![
            (1, "written by 0.9", legacy_id.as_str()),
            (2, "written by 1.0", "c-1")
        ]
    );
    let then = app
        .read_models
        .room_at(room, GlobalPosition(head))
        .await
        .expect("room_at")
        .expect("exists");
    assert_eq!(then.message_count, 2);
    // The log itself keeps the event as stored: analysts see its version and shape.
    let stored = app
        .read_models
        .events(
            None,
            None,
            &filter(
                None,
                None,
                Some("Room"),
                Some(&room.to_string()),
                &["MessageSent"],
            ),
        )
        .await
        .expect("events");
    assert_eq!(stored.events[0].event_version, "0.9");
    assert_eq!(
        stored.events[0].payload["MessageSent"]["text"],
        "written by 0.9"
    );
}
