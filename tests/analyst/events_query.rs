//! The `events` page query: pages, filters, and redaction of secrets and erased text.

use super::*;

on_both_apps!(the_events_query_pages_through_the_log_with_filters_and_redaction);

async fn the_events_query_pages_through_the_log_with_filters_and_redaction(app: &App) {
    let (ann, _bob, room) = analyst_and_member(app, "r").await;
    for i in 0..5 {
        app.commands
            .send_message(room, ann, "hi", &format!("c{i}"), &meta())
            .await
            .expect("send");
    }
    let head = caught_up(&app.read_models).await;
    assert_eq!(head, 11);
    let models = &app.read_models;

    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = models
            .events(after, Some(3), &EventFilter::all())
            .await
            .expect("page");
        assert!(page.events.len() <= 3);
        seen.extend(page.events.iter().cloned());
        if !page.has_more {
            break;
        }
        after = page.events.last().map(|e| e.position.0);
    }
    assert_eq!(
        seen.iter().map(|e| e.position.0).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    let registered = &seen[0];
    assert_eq!(registered.event_type, "UserRegistered");
    assert_eq!(
        registered.payload["UserRegistered"]["password_hash"],
        "[redacted]"
    );
    assert_eq!(registered.payload["UserRegistered"]["username"], "ann");
    assert!(!seen
        .iter()
        .any(|e| e.payload.to_string().contains(SECRET_HASH)));

    let all = models
        .events(None, Some(1000), &EventFilter::all())
        .await
        .expect("all");
    assert!(!all.has_more);
    assert_eq!(all.events, seen, "one page or many, the same events");

    let count = |f: EventFilter| async move {
        models
            .events(None, Some(100), &f)
            .await
            .expect("filtered page")
            .events
    };
    let messages = count(filter(None, None, None, None, &["MessageSent"])).await;
    assert_eq!(
        messages
            .iter()
            .map(|e| e.payload["MessageSent"]["seq"].as_i64())
            .collect::<Vec<_>>(),
        (1..=5).map(Some).collect::<Vec<_>>()
    );
    let room_id = room.to_string();
    assert_eq!(
        count(filter(None, None, Some("Room"), Some(&room_id), &[]))
            .await
            .len(),
        8,
        "created, invited, joined, five messages"
    );
    assert_eq!(
        count(filter(None, None, None, Some(&room_id), &[]))
            .await
            .len(),
        8,
        "the id alone finds its aggregate"
    );
    assert_eq!(
        count(filter(None, None, Some("User"), None, &[]))
            .await
            .len(),
        3
    );
    assert_eq!(
        count(filter(Some(2), Some(4), None, None, &[]))
            .await
            .iter()
            .map(|e| e.position.0)
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(
        count(filter(None, None, None, Some("no-such-aggregate"), &[]))
            .await
            .is_empty()
    );
    let tail = models
        .events(Some(9), Some(5), &EventFilter::all())
        .await
        .expect("tail");
    assert_eq!(tail.events.len(), 2);
    assert!(!tail.has_more);

    assert!(matches!(
        models.events(Some(-1), None, &EventFilter::all()).await,
        Err(ReadModelError::Filter(FilterError::NegativePosition(-1)))
    ));
    assert!(matches!(
        models.events(None, Some(0), &EventFilter::all()).await,
        Err(ReadModelError::Filter(FilterError::PageSize { .. }))
    ));
}
