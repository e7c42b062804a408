//! `postern plugin bench`: the runtime's per-call micro-benchmark. Takes
//! the first case of a fixture and reports what one transaction costs with
//! a fresh instance (the default) and what a call on a warm instance costs,
//! and from those, instantiating and dropping an instance.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::plugin::PluginSession;
use crate::plugin::cache::CacheSetting;

fn per(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n.max(1))
}

/// Runs the benchmark and prints figures.
pub fn run(
    plugin: Option<&Path>,
    fixture: &Path,
    cache: &CacheSetting,
    fresh_iterations: u32,
    iterations: u32,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        let (fx, def, runtime) = super::plugin_test::load(plugin, fixture, cache, false).await?;
        let case = fx
            .cases
            .first()
            .ok_or_else(|| anyhow::anyhow!("{}: no [[case]]", fixture.display()))?;
        let base = fixture.parent().unwrap_or(Path::new("."));
        let prepared = super::plugin_test::prepare(&runtime, &def, &fx.config, case, base).await?;
        let load_time = started.elapsed();
        let input = prepared.input();

        // Warm up (and make sure the case runs at all).
        let mut warm = PluginSession::new(prepared.chains.clone());
        for _ in 0..100 {
            warm.run(prepared.stage, &input, "BENCH").await;
        }

        let t = Instant::now();
        let mut dropping = Duration::ZERO;
        for _ in 0..fresh_iterations {
            let mut s = PluginSession::new(prepared.chains.clone());
            s.run(prepared.stage, &input, "BENCH").await;
            let d = Instant::now();
            s.end_transaction();
            dropping += d.elapsed();
        }
        let fresh = t.elapsed();

        let t = Instant::now();
        for _ in 0..iterations {
            warm.run(prepared.stage, &input, "BENCH").await;
        }
        let call = t.elapsed();

        println!(
            "plugin {} ({}), stage {}, case {:?}, {iterations} iterations",
            def.path.display(),
            prepared
                .chains
                .plugins
                .first()
                .map(|p| p.digest.as_str())
                .unwrap_or("?"),
            prepared.stage.name(),
            case.name
        );
        println!(
            "load (compile or cache) + link + checks: {:.1} ms",
            load_time.as_secs_f64() * 1e3
        );
        let call_us = per(call, iterations);
        if fresh_iterations > 0 {
            let fresh_us = per(fresh, fresh_iterations);
            println!(
                "fresh instance per transaction (instantiate + call + drop): {fresh_us:.1} us"
            );
            let drop_us = per(dropping, fresh_iterations);
            println!("call on a warm instance: {call_us:.1} us");
            println!(
                "instantiate (difference): {:.1} us",
                (fresh_us - call_us - drop_us).max(0.0)
            );
            println!("drop (end of the transaction): {drop_us:.1} us");
        } else {
            println!("call on a warm instance: {call_us:.1} us");
        }
        Ok(())
    })
}
