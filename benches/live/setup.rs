//! Set-ups: the two instances of the cross-instance scenario.

#[allow(unused_imports)]
use super::*;

/// A and B over one database and one Redis prefix, A's projector the active one (A starts
/// alone and publishes a room's creation before B starts).
pub(crate) async fn two_instances() -> (TestServer, TestServer) {
    admin().await; // fails with a clear message when Redis is unreachable
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let prefix = unique_prefix();
    let url = redis_url();
    let a = TestServer::on_log(
        log.clone(),
        Some(db),
        redis_options(&url, &prefix, PresenceConfig::default().ttl).await,
        WsConfig::default(),
    )
    .await;
    let probe = a.register("probe").await;
    a.create_room(&probe, "probe", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.app.relay.stats().published == 0 {
        assert!(
            Instant::now() < deadline,
            "A's projector did not publish within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = TestServer::on_log(
        log,
        None,
        redis_options(&url, &prefix, PresenceConfig::default().ttl).await,
        WsConfig::default(),
    )
    .await;
    (a, b)
}
