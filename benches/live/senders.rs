//! Senders: paced `sendMessage` calls on keep-alive HTTP connections.

#[allow(unused_imports)]
use super::*;

/// One `sendMessage` call. `phase` is `None` for the warm-up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub(crate) phase: Option<usize>,
    pub(crate) room: usize,
    pub(crate) seq: i64,
    /// When the pacer meant it to start.
    pub(crate) scheduled: Instant,
    /// When the HTTP call started / its response was read.
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

#[derive(Clone)]
pub(crate) struct Sender {
    pub(crate) k: usize,
    pub(crate) label: &'static str,
    pub(crate) client: reqwest::Client,
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) room_id: String,
    pub(crate) room: usize,
}

impl Sender {
    pub(crate) async fn send(&self, phase: Option<usize>, i: usize, scheduled: Instant) -> Sent {
        let tag = phase.map_or_else(|| "w".to_owned(), |p| p.to_string());
        let body = json!({
            "query": SEND,
            "variables": {
                "r": self.room_id,
                "b": "live bench message",
                "c": format!("{}-{}-{tag}-{i}", self.label, self.k),
            }
        });
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&body);
        let start = Instant::now();
        let response = request.send().await.expect("POST /graphql");
        let status = response.status();
        let data: Value = response.json().await.expect("a JSON body");
        let end = Instant::now();
        assert!(
            status.is_success() && data.get("errors").is_none(),
            "sendMessage failed with {status}: {data}"
        );
        let seq = data["data"]["sendMessage"]["seq"]
            .as_i64()
            .unwrap_or_else(|| panic!("no seq in {data}"));
        Sent {
            phase,
            room: self.room,
            seq,
            scheduled,
            start,
            end,
        }
    }

    /// Sends `n` messages one after the other, unpaced.
    pub(crate) async fn warm_up(self, n: usize) -> Vec<Sent> {
        let mut sent = Vec::with_capacity(n);
        for i in 0..n {
            sent.push(self.send(None, i, Instant::now()).await);
        }
        sent
    }

    /// This sender's share of every phase: `rate / senders` msg/s, its ticks staggered by
    /// `k / rate` from the phase start.
    pub(crate) async fn paced(self, senders: usize, start: Instant, phase: Duration) -> Vec<Sent> {
        let mut sent = Vec::new();
        let mut phase_start = start;
        for (p, rate) in rates().iter().enumerate() {
            let rate = f64::from(*rate);
            let phase_end = phase_start + phase;
            let period = Duration::from_secs_f64(senders as f64 / rate);
            let first = phase_start + Duration::from_secs_f64(self.k as f64 / rate);
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut i = 0;
            loop {
                let scheduled = ticks.tick().await;
                if scheduled >= phase_end || Instant::now() >= phase_end {
                    break;
                }
                sent.push(self.send(Some(p), i, scheduled).await);
                i += 1;
            }
            phase_start = phase_end;
        }
        sent
    }
}
