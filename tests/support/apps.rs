//! An [`App`] (the server's parts, without HTTP) on a fresh PostgreSQL database or on the
//! embedded store, with a projector tuned for tests; and `on_both_apps!`, which runs a
//! scenario `async fn(&App)` on each.

use std::time::Duration;

use parley::app::App;
use parley::store::{EventLog, PostgresLog};
use parley_projections::postgres::ProjectorConfig;

use super::TestDb;

/// A projector that reacts within 50 ms and takes over within 100 ms.
pub fn fast_config() -> ProjectorConfig {
    ProjectorConfig {
        batch_size: 500,
        poll_interval: Duration::from_millis(50),
        standby_retry: Duration::from_millis(100),
        ..ProjectorConfig::default()
    }
}

/// An app on its own PostgreSQL database.
pub fn postgres_app(db: &TestDb) -> App {
    App::start(
        EventLog::postgres(PostgresLog::new(db.pool.clone())),
        "test-secret".into(),
        fast_config(),
    )
}

/// An app and the database it owns (none for the embedded store).
pub struct Harness {
    _db: Option<TestDb>,
    pub app: App,
}

impl Harness {
    pub async fn postgres() -> Self {
        let db = TestDb::new().await;
        let app = postgres_app(&db);
        Self { _db: Some(db), app }
    }

    pub fn memory() -> Self {
        Self {
            _db: None,
            app: App::start(EventLog::memory(), "test-secret".into(), fast_config()),
        }
    }
}

/// `on_both_apps!(scenario, …)`: for each `async fn scenario(app: &App)` of the including
/// module, a test on PostgreSQL and one on the embedded store.
#[allow(unused_macros)]
macro_rules! on_both_apps {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                let h = crate::support::apps::Harness::postgres().await;
                super::$scenario(&h.app).await;
                h.app.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_embedded_store() {
                let h = crate::support::apps::Harness::memory();
                super::$scenario(&h.app).await;
                h.app.stop().await;
            }
        }
    )*};
}
