//! The report: per phase and scenario, and the relay's counters.

#[allow(unused_imports)]
use super::*;

pub(crate) fn print_run(name: &str, run: &RunResult) {
    println!("-- {name}");
    println!(
        "{:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>9} {:>8}",
        "target/s",
        "sent",
        "achieved",
        "lat p50",
        "lat p99",
        "lat max",
        "samples",
        "http p50",
        "http p99",
        "late p99",
        "<resp",
        "missing"
    );
    for p in &run.phases {
        println!(
            "{:>8} {:>7} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>10.3} {:>10.3} {:>11.3} {:>9} {:>8}",
            p.rate,
            p.sent,
            p.achieved,
            ms(p.latency.p50),
            ms(p.latency.p99),
            ms(p.latency.max),
            p.latency.n,
            ms(p.http.p50),
            ms(p.http.p99),
            ms(p.pacing.p99),
            p.before_response,
            p.missing,
        );
    }
    println!(
        "   (ms; lat = subscriber read the frame - sendMessage call started; http = the \
         sendMessage round trip; late = call start behind the pacer's schedule; <resp = \
         deliveries read before the sender had its HTTP response)"
    );
    for p in &run.phases {
        println!(
            "   {:>5}/s: send start -> projected p50 {:.3} p99 {:.3} max {:.3}; projected -> \
             subscriber p50 {:.3} p99 {:.3} max {:.3}",
            p.rate,
            ms(p.to_projection.p50),
            ms(p.to_projection.p99),
            ms(p.to_projection.max),
            ms(p.after_projection.p50),
            ms(p.after_projection.p99),
            ms(p.after_projection.max),
        );
        if p.after_redis.n > 0 {
            println!(
                "   {:>5}/s: (Redis tap) projected -> out of Redis p50 {:.3} p99 {:.3} max {:.3}; \
                 out of Redis -> subscriber p50 {:.3} p99 {:.3} max {:.3}",
                p.rate,
                ms(p.projection_to_redis.p50),
                ms(p.projection_to_redis.p99),
                ms(p.projection_to_redis.max),
                ms(p.after_redis.p50),
                ms(p.after_redis.p99),
                ms(p.after_redis.max),
            );
        }
        let seconds: Vec<String> = p
            .by_second
            .iter()
            .map(|s| format!("{:.1}/{:.0}", ms(s.p50), ms(s.max)))
            .collect();
        println!(
            "   {:>5}/s: latency p50/max by second: {}",
            p.rate,
            seconds.join(" ")
        );
    }
    println!(
        "   WebSocket `next` frames: {} in the measured window (+ drain {:.0} ms), {} in all \
         incl. warm-up; duplicates {}, refused {}, connections lost {}, live-feed tap \
         lagged {}",
        run.ws_window,
        ms(run.drain),
        run.ws_total,
        run.duplicates,
        run.refused,
        run.lost,
        run.feed_lagged
    );
}

pub(crate) fn delta(after: &RelayStats, before: &RelayStats) -> RelayStats {
    RelayStats {
        published: after.published - before.published,
        publish_errors: after.publish_errors - before.publish_errors,
        publish_commands: after.publish_commands - before.publish_commands,
        subscribe_commands: after.subscribe_commands - before.subscribe_commands,
        unsubscribe_commands: after.unsubscribe_commands - before.unsubscribe_commands,
        received: after.received - before.received,
        deliveries: after.deliveries - before.deliveries,
        disconnects: after.disconnects - before.disconnects,
        resyncs: after.resyncs - before.resyncs,
        lagged: after.lagged - before.lagged,
        malformed: after.malformed - before.malformed,
    }
}

pub(crate) fn print_relay(names: &[&str], stats: &[RelayStats], ws: usize, what: &str) {
    println!("   {what}:");
    println!(
        "   {:<14} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10} {:>6} {:>7} {:>6} {:>7}",
        "instance",
        "published",
        "PUBLISH",
        "SUBSCRIBE",
        "UNSUB",
        "received",
        "deliveries",
        "lagged",
        "resyncs",
        "errors",
        "disconn"
    );
    let mut sum = RelayStats::default();
    for (name, s) in names.iter().zip(stats) {
        println!(
            "   {:<14} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10} {:>6} {:>7} {:>6} {:>7}",
            name,
            s.published,
            s.publish_commands,
            s.subscribe_commands,
            s.unsubscribe_commands,
            s.received,
            s.deliveries,
            s.lagged,
            s.resyncs,
            s.publish_errors,
            s.disconnects
        );
        sum = RelayStats {
            publish_commands: sum.publish_commands + s.publish_commands,
            subscribe_commands: sum.subscribe_commands + s.subscribe_commands,
            unsubscribe_commands: sum.unsubscribe_commands + s.unsubscribe_commands,
            deliveries: sum.deliveries + s.deliveries,
            ..sum
        };
    }
    println!(
        "   Redis commands (A+B) {} / WebSocket messages delivered {} = {:.4} per delivered \
         message (PUBLISH {}, SUBSCRIBE {}, UNSUBSCRIBE {}; relay deliveries {})",
        sum.redis_commands(),
        ws,
        sum.redis_commands() as f64 / ws.max(1) as f64,
        sum.publish_commands,
        sum.subscribe_commands,
        sum.unsubscribe_commands,
        sum.deliveries,
    );
}
