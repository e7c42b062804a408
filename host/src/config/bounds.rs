//! Bounds on the numbers of the config: a value that would make the service
//! unusable (a zero timeout, a certificate check that never sleeps, AUTH
//! refused to everyone) or whose arithmetic in the daemon could overflow
//! (a delay multiplied by the failures, a deadline added to now) is
//! refused with its key, by `postern check` and by a start or reload alike.
//! The ceilings are far above any sensible value, like Postfix's limits.

use std::time::Duration;

use super::{Config, Problem, is_hostname};

/// Longest timeout or interval accepted: every deadline the daemon computes
/// from one stays far from overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Longest delay before a reply (`smtp.error_delay`, `smtp.auth_failure_delay`,
/// which is multiplied by up to 5 recent failures).
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Longest queue time or retry interval (`queue.max_lifetime`, `queue.retry_max`).
pub const MAX_QUEUE_TIME: Duration = Duration::from_secs(365 * 86_400);

/// Longest command line (`smtp.max_line_length`); every session may hold
/// one, so it is memory per connection. Postfix's `line_length_limit` is
/// 2048 by default; 64 KiB is far beyond any real client.
pub const MAX_LINE_LENGTH: usize = 64 * 1024;

/// `key` must lie within `min..=max`.
fn within(out: &mut Vec<Problem>, key: &str, value: Duration, min: Duration, max: Duration) {
    if value < min || value > max {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let why = if value.is_zero() {
            "must not be zero: ".to_owned()
        } else {
            String::new()
        };
        out.push(Problem {
            key: key.to_owned(),
            message: format!(
                "{why}must be between {} and {} (is {})",
                show(min),
                show(max),
                show(value)
            ),
        });
    }
}

/// `key` must be at least 1.
fn positive(out: &mut Vec<Problem>, key: &str, value: u64, what: &str) {
    if value == 0 {
        out.push(Problem {
            key: key.to_owned(),
            message: format!("must be at least 1 ({what})"),
        });
    }
}

/// Everything out of bounds, each with its key.
pub fn problems(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let second = Duration::from_secs(1);
    let s = &c.smtp;
    for (key, value) in [
        ("smtp.command_timeout", s.command_timeout.0),
        ("smtp.idle_timeout", s.idle_timeout.0),
        ("smtp.data_timeout", s.data_timeout.0),
        ("tls.handshake_timeout", c.tls.handshake_timeout.0),
        // Zero is a busy loop re-reading the certificates.
        ("tls.reload_interval", c.tls.reload_interval.0),
        ("queue.retry_initial", c.queue.retry_initial.0),
    ] {
        within(&mut out, key, value, second, MAX_TIMEOUT);
    }
    within(
        &mut out,
        "dns.timeout",
        c.dns.timeout.0,
        Duration::from_millis(100),
        MAX_TIMEOUT,
    );
    for (key, value) in [
        ("server.shutdown_grace", c.server.shutdown_grace.0),
        ("queue.journal_seal_idle", c.queue.journal_seal_idle.0),
    ] {
        within(&mut out, key, value, Duration::ZERO, MAX_TIMEOUT);
    }
    for (key, value) in [
        ("smtp.error_delay", s.error_delay.0),
        ("smtp.auth_failure_delay", s.auth_failure_delay.0),
    ] {
        within(&mut out, key, value, Duration::ZERO, MAX_DELAY);
    }
    for (key, value) in [
        ("queue.retry_max", c.queue.retry_max.0),
        ("queue.max_lifetime", c.queue.max_lifetime.0),
    ] {
        within(&mut out, key, value, second, MAX_QUEUE_TIME);
    }
    for (i, p) in c.plugins.iter().enumerate() {
        if p.time_limit.0 > MAX_TIMEOUT {
            within(
                &mut out,
                &format!("plugin[{i}].time_limit"),
                p.time_limit.0,
                Duration::from_millis(10),
                MAX_TIMEOUT,
            );
        }
    }
    if s.max_line_length > MAX_LINE_LENGTH {
        out.push(Problem {
            key: "smtp.max_line_length".into(),
            message: format!(
                "must be at most {MAX_LINE_LENGTH} (each session may buffer a line this long; Postfix's line_length_limit is 2048)"
            ),
        });
    }
    positive(
        &mut out,
        "smtp.max_auth_failures",
        s.max_auth_failures.into(),
        "0 would close every session at its first AUTH failure",
    );
    positive(
        &mut out,
        "smtp.max_auth_failures_per_client",
        s.max_auth_failures_per_client.into(),
        "0 would refuse AUTH to every client",
    );
    positive(
        &mut out,
        "wasm.max_instances",
        c.wasm.max_instances.into(),
        "no plugin could ever run",
    );
    for (i, sni) in c.tls.sni.iter().enumerate() {
        let key = format!("tls.sni[{i}].names");
        // Without names the certificate would silently become the default.
        if sni.names.is_empty() {
            out.push(Problem {
                key: key.clone(),
                message: "lists no server name: give the names this certificate serves (the default certificate is [tls] certificate/key)".into(),
            });
        }
        for n in &sni.names {
            if !is_hostname(n.strip_prefix("*.").unwrap_or(n)) {
                out.push(Problem {
                    key: key.clone(),
                    message: format!("{n:?} is not a host name or *.domain"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::super::{Config, ConfigError};
    use std::path::Path;

    /// The config with `line` added to `[section]`; the problems found.
    fn problems(section: &str, line: &str) -> String {
        let text = if MINIMAL.contains(&format!("[{section}]\n")) {
            MINIMAL.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"))
        } else {
            format!("{MINIMAL}\n[{section}]\n{line}\n")
        };
        match Config::from_toml(&text, Path::new("t.toml")) {
            Ok(_) => String::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => panic!("{e}"),
        }
    }

    #[track_caller]
    fn refused(section: &str, line: &str, key: &str) {
        let p = problems(section, line);
        assert!(
            p.lines().any(|l| l.starts_with(&format!("{key}: "))),
            "{line}: {p:?}"
        );
    }

    #[track_caller]
    fn accepted(section: &str, line: &str) {
        assert_eq!(problems(section, line), "", "{line}");
    }

    #[test]
    fn zero_timeouts_are_refused_with_their_key() {
        for key in ["command_timeout", "idle_timeout", "data_timeout"] {
            refused("smtp", &format!("{key} = 0"), &format!("smtp.{key}"));
            refused("smtp", &format!("{key} = \"0s\""), &format!("smtp.{key}"));
            accepted("smtp", &format!("{key} = \"1s\""));
        }
        refused("tls", "handshake_timeout = 0", "tls.handshake_timeout");
        refused("dns", "timeout = 0", "dns.timeout");
        refused("queue", "retry_initial = 0", "queue.retry_initial");
        let p = problems("smtp", "idle_timeout = 0");
        assert!(p.contains("must not be zero"), "{p}");
    }

    #[test]
    fn a_certificate_check_that_never_sleeps_is_refused() {
        refused("tls", "reload_interval = 0", "tls.reload_interval");
        refused("tls", "reload_interval = \"10ms\"", "tls.reload_interval");
        accepted("tls", "reload_interval = \"1s\"");
    }

    #[test]
    fn durations_whose_arithmetic_could_overflow_are_refused() {
        // Multiplied by up to 5 recent failures; added to now; added to
        // the earned time of a slow DATA.
        let huge = "\"500000000000000000s\"";
        refused(
            "smtp",
            &format!("auth_failure_delay = {huge}"),
            "smtp.auth_failure_delay",
        );
        refused(
            "smtp",
            "auth_failure_delay = \"2m\"",
            "smtp.auth_failure_delay",
        );
        accepted("smtp", "auth_failure_delay = \"1m\"");
        accepted("smtp", "auth_failure_delay = 0");
        refused("smtp", &format!("error_delay = {huge}"), "smtp.error_delay");
        refused(
            "smtp",
            &format!("data_timeout = {huge}"),
            "smtp.data_timeout",
        );
        refused(
            "smtp",
            "idle_timeout = 9223372036854775807",
            "smtp.idle_timeout",
        );
        refused("queue", &format!("retry_max = {huge}"), "queue.retry_max");
        refused(
            "queue",
            &format!("max_lifetime = {huge}"),
            "queue.max_lifetime",
        );
        refused(
            "queue",
            &format!("journal_seal_idle = {huge}"),
            "queue.journal_seal_idle",
        );
        accepted("queue", "journal_seal_idle = \"1h\"");
        refused(
            "server",
            &format!("shutdown_grace = {huge}"),
            "server.shutdown_grace",
        );
        accepted("server", "shutdown_grace = 0");
        refused(
            "tls",
            &format!("handshake_timeout = {huge}"),
            "tls.handshake_timeout",
        );
        let plugin = format!("name = \"p\"\npath = \"p.wasm\"\ntime_limit = {huge}");
        refused("[plugin]", &plugin, "plugin[0].time_limit");
    }

    #[test]
    fn counters_that_lock_everyone_out_are_refused() {
        refused(
            "smtp",
            "max_auth_failures_per_client = 0",
            "smtp.max_auth_failures_per_client",
        );
        refused("smtp", "max_auth_failures = 0", "smtp.max_auth_failures");
        refused("wasm", "max_instances = 0", "wasm.max_instances");
        accepted("smtp", "max_auth_failures_per_client = 1");
    }

    #[test]
    fn line_length_has_a_ceiling() {
        refused(
            "smtp",
            "max_line_length = 9223372036854775807",
            "smtp.max_line_length",
        );
        refused("smtp", "max_line_length = 65537", "smtp.max_line_length");
        accepted("smtp", "max_line_length = 65536");
    }

    #[test]
    fn sni_certificates_need_names() {
        let sni = |names: &str| {
            format!("names = {names}\ncertificate = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"")
        };
        refused("[tls.sni]", &sni("[]"), "tls.sni[0].names");
        let p = problems("[tls.sni]", &sni("[]"));
        assert!(p.contains("lists no server name"), "{p}");
        refused("[tls.sni]", &sni("[\"not a name\"]"), "tls.sni[0].names");
        accepted("[tls.sni]", &sni("[\"mx.test\", \"*.example.test\"]"));
    }
}
