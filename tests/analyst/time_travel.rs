//! Time travel: `room_at` and `messages_at` at every position of a scripted history.

use super::*;

on_both_apps!(room_at_every_position_of_a_scripted_history_equals_the_state_recorded_then);

/// The room as the script knows it after an event.
#[derive(Clone, Debug, Default, PartialEq)]
struct Expected {
    members: BTreeSet<UserId>,
    invited: BTreeSet<UserId>,
    /// (seq, body, sender, position) of the newest message.
    last_message: Option<(i64, String, UserId, i64)>,
    message_count: i64,
}

/// Drives a scripted history and records, for every position, what the room was then
/// (`None`: not created yet).
struct Script<'a> {
    app: &'a App,
    room: Option<RoomId>,
    state: Option<Expected>,
    at: Vec<Option<Expected>>,
}

impl Script<'_> {
    /// Checks that `events` new positions appeared and records the states after each.
    async fn recorded(&mut self, states: Vec<Option<Expected>>) {
        let head = caught_up(&self.app.read_models).await;
        self.at.extend(states);
        assert_eq!(
            head,
            self.at.len() as i64,
            "one position per scripted event"
        );
    }

    async fn register(&mut self, name: &str) -> UserId {
        let id = register(self.app, name).await;
        self.recorded(vec![self.state.clone()]).await;
        id
    }

    async fn create(&mut self, host: UserId, invited: &[UserId]) -> RoomId {
        let room = self
            .app
            .commands
            .create_room(host, "history", invited.to_vec(), &meta())
            .await
            .expect("create");
        let mut state = Expected {
            members: BTreeSet::from([host]),
            ..Expected::default()
        };
        let mut states = vec![Some(state.clone())];
        for user in invited {
            state.invited.insert(*user);
            states.push(Some(state.clone()));
        }
        self.room = Some(room);
        self.state = Some(state);
        self.recorded(states).await;
        room
    }

    fn room(&self) -> RoomId {
        self.room.expect("room created")
    }

    fn change(&mut self, f: impl FnOnce(&mut Expected)) -> Vec<Option<Expected>> {
        let state = self.state.as_mut().expect("room created");
        f(state);
        vec![Some(state.clone())]
    }

    async fn join(&mut self, user: UserId) {
        self.app
            .commands
            .join_room(self.room(), user, &meta())
            .await
            .expect("join");
        let states = self.change(|s| {
            s.invited.remove(&user);
            s.members.insert(user);
        });
        self.recorded(states).await;
    }

    async fn leave(&mut self, user: UserId) {
        self.app
            .commands
            .leave_room(self.room(), user, &meta())
            .await
            .expect("leave");
        let states = self.change(|s| {
            s.members.remove(&user);
        });
        self.recorded(states).await;
    }

    async fn send(&mut self, sender: UserId, body: &str) {
        let sent = self
            .app
            .commands
            .send_message(self.room(), sender, body, body, &meta())
            .await
            .expect("send");
        let position = self.at.len() as i64 + 1;
        let states = self.change(|s| {
            s.message_count += 1;
            assert_eq!(sent.seq, MessageSeq(s.message_count as u64));
            s.last_message = Some((s.message_count, body.to_owned(), sender, position));
        });
        self.recorded(states).await;
    }
}

async fn room_at_every_position_of_a_scripted_history_equals_the_state_recorded_then(app: &App) {
    let mut script = Script {
        app,
        room: None,
        state: None,
        at: Vec::new(),
    };
    let host = script.register("host").await;
    let alice = script.register("alice").await;
    let bob = script.register("bob").await;
    script.create(host, &[alice, bob]).await;
    script.join(alice).await;
    script.send(host, "m1 from the host").await;
    script.send(alice, "m2 from alice").await;
    let carol = script.register("carol").await;
    script.join(bob).await;
    script.leave(alice).await;
    script.send(bob, "m3 from bob").await;
    script.join(alice).await;
    script.join(carol).await;
    script.leave(host).await;
    script.send(carol, "m4 from carol").await;
    script.send(alice, "m5 back again").await;
    script.leave(bob).await;

    let room = script.room();
    let mut live = app
        .read_models
        .room(room)
        .await
        .expect("room view")
        .expect("room exists");
    // Time travel answers at the log's precision (the embedded store keeps nanoseconds).
    live.created_at = live.created_at.trunc_subsecs(6);
    let head = script.at.len() as i64;
    for position in 0..=head + 3 {
        let at = GlobalPosition(position);
        let expected = if position == 0 {
            None
        } else {
            script.at[(position.min(head) - 1) as usize].clone()
        };
        let got = app.read_models.room_at(room, at).await.expect("room_at");
        match (&expected, &got) {
            (None, None) => {}
            (Some(expected), Some(got)) => {
                assert_eq!(got.id, room);
                assert_eq!(got.position, at);
                assert_eq!(got.name, "history");
                assert_eq!(got.host, host);
                assert_eq!(got.created_at, live.created_at);
                assert_eq!(
                    got.members.iter().copied().collect::<BTreeSet<_>>(),
                    expected.members,
                    "members at {position}"
                );
                assert_eq!(
                    got.invited.iter().copied().collect::<BTreeSet<_>>(),
                    expected.invited,
                    "invited at {position}"
                );
                assert_eq!(
                    got.message_count, expected.message_count,
                    "count at {position}"
                );
                assert_eq!(
                    got.last_message.as_ref().map(|m| (
                        m.seq.as_i64(),
                        m.body.clone(),
                        m.sender,
                        m.position.0
                    )),
                    expected.last_message,
                    "last message at {position}"
                );
            }
            _ => panic!("at {position}: expected {expected:?}, got {got:?}"),
        }
        // History as it was: exactly the messages sent by then, from either end.
        let count = expected.as_ref().map_or(0, |e| e.message_count);
        for request in [
            PageRequest {
                after: Some(0),
                first: Some(100),
                ..Default::default()
            },
            PageRequest::default(),
        ] {
            let page = app
                .read_models
                .messages_at(room, request, at)
                .await
                .expect("messages_at");
            assert_eq!(
                page.messages
                    .iter()
                    .map(|m| m.seq.as_i64())
                    .collect::<Vec<_>>(),
                (1..=count).collect::<Vec<_>>(),
                "history at {position}"
            );
            assert!(!page.has_more);
        }
    }
    let paged = app
        .read_models
        .messages_at(
            room,
            PageRequest {
                last: Some(2),
                ..Default::default()
            },
            GlobalPosition(head),
        )
        .await
        .expect("page");
    assert_eq!(
        paged.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(paged.has_more);

    // The present, replayed, is what the live read model says.
    let now = app
        .read_models
        .room_at(room, GlobalPosition(head))
        .await
        .expect("room_at")
        .expect("exists");
    assert_eq!(now.view(), live);
    assert!(app
        .read_models
        .room_at(RoomId::new(), GlobalPosition(head))
        .await
        .expect("unknown room")
        .is_none());
    assert!(matches!(
        app.read_models.room_at(room, GlobalPosition(-1)).await,
        Err(ReadModelError::Filter(FilterError::NegativePosition(-1)))
    ));
}
