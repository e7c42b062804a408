//! `postern plugin test`: runs one plugin against transaction fixtures
//! without a daemon, so plugin authors can test in CI.
//!
//! A fixture file (TOML; or JSON with the same fields, named `*.json`):
//!
//! ```toml
//! plugin = "../target/wasm32-wasip2/plugin/postern_plugin_access.wasm"  # relative to this file
//! # grants = ["edit"]            # capabilities, as in the [[plugin]] table
//! [config]                       # the chain entry's config table
//! sender = { "blocked.test" = "REJECT" }
//!
//! [[case]]
//! name = "blocked sender"
//! stage = "rcpt"                 # connect, helo, mail, rcpt, data
//! client_ip = "192.0.2.1"        # optional session fields: client_ptr, helo,
//! helo = "client.test"           #   trusted, auth_user, listener
//! mail_from = "x@blocked.test"
//! rcpt_to = ["alice@example.test"]   # at rcpt: the last one is being checked
//! # rcpt_params = ["NOTIFY=SUCCESS"] # its RCPT TO parameters
//! # message = "spam.eml"         # data stage: a file, or message_text = "..."
//! # config = { mode = "x" }      # this case's config instead of [config]
//! # (the daemon's smtp.max_header_fields/max_header_size apply, and may be
//! #  set at the top: a message over them is refused with 552 5.3.4)
//! [case.expect]
//! verdict = "reject"             # continue, accept, reject, tempfail, discard, quarantine, failure
//! # failure = "trap"             # with verdict = "failure": trap, time, memory, outcome, overloaded
//! code = 554
//! enhanced = "5.7.1"
//! text = "Sender address rejected"   # substring of the reply text or reason
//! scores = { SPAMMY = 2.0 }      # symbols that must be present, with points
//! headers = ["X-Tag", "X-Other: exact value"]   # fields the plugin must add or change
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;

use crate::config::{
    Bytes, ChainEntry, Chains as ChainConfig, Grant, OnError, PluginDef, Seconds, Wasm, WasmEntry,
};
use crate::message::HeaderAction;
use crate::message::limits::{HeaderLimits, check_header};
use crate::plugin::cache::CacheSetting;
use crate::plugin::chain::FailureKind;
use crate::plugin::{
    Chains, Decision, EnvelopeInfo, Input, PluginSession, SessionInfo, Stage, StageResult, Verdict,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Fixture {
    pub(super) plugin: Option<PathBuf>,
    #[serde(default)]
    pub(super) config: toml::Table,
    #[serde(default)]
    time_limit: Option<Seconds>,
    #[serde(default)]
    memory_limit: Option<Bytes>,
    /// Capabilities granted to the plugin, as in its `[[plugin]]` table.
    #[serde(default)]
    grants: Vec<Grant>,
    /// `smtp.max_header_fields` (default as in the daemon).
    max_header_fields: Option<usize>,
    /// `smtp.max_header_size` (default as in the daemon).
    max_header_size: Option<Bytes>,
    #[serde(rename = "case")]
    pub(super) cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Case {
    pub(super) name: String,
    stage: String,
    #[serde(default = "default_ip")]
    client_ip: String,
    client_ptr: Option<String>,
    helo: Option<String>,
    #[serde(default)]
    trusted: bool,
    auth_user: Option<String>,
    #[serde(default = "default_listener")]
    listener: String,
    #[serde(default)]
    mail_from: String,
    #[serde(default)]
    rcpt_to: Vec<String>,
    /// RCPT TO parameters of the recipient checked, `KEYWORD[=value]`.
    #[serde(default)]
    rcpt_params: Vec<String>,
    message: Option<PathBuf>,
    message_text: Option<String>,
    /// This case's config table, instead of the fixture's `[config]`.
    config: Option<toml::Table>,
    expect: Expect,
}

fn default_ip() -> String {
    "192.0.2.1".into()
}

fn default_listener() -> String {
    "mx".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    verdict: String,
    /// With verdict "failure": the kind.
    failure: Option<FailureKind>,
    code: Option<u16>,
    enhanced: Option<String>,
    text: Option<String>,
    #[serde(default)]
    scores: BTreeMap<String, f64>,
    #[serde(default)]
    headers: Vec<String>,
}

fn stage(name: &str) -> anyhow::Result<Stage> {
    Stage::from_name(name)
        .with_context(|| format!("unknown stage {name:?} (connect, helo, mail, rcpt, data)"))
}

/// Runs every fixture; returns the number of failed cases.
pub fn run(
    plugin: Option<&Path>,
    fixtures: &[PathBuf],
    cache: &CacheSetting,
) -> anyhow::Result<usize> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut failed = 0;
        for f in fixtures {
            failed += run_fixture(plugin, f, cache).await?;
        }
        Ok(failed)
    })
}

/// Reads a fixture and sets up the runtime and plugin definition.
pub(super) async fn load(
    plugin: Option<&Path>,
    path: &Path,
    cache: &CacheSetting,
    reuse_instances: bool,
) -> anyhow::Result<(Fixture, PluginDef, Arc<crate::plugin::Runtime>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // TOML, or JSON for fixtures written by other tools (same fields).
    let fixture: Fixture = if path.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let wasm = match (plugin, &fixture.plugin) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => base.join(p),
        (None, None) => anyhow::bail!(
            "{}: no plugin given (--plugin or `plugin = ...`)",
            path.display()
        ),
    };
    let def = PluginDef {
        name: "under-test".into(),
        path: wasm,
        on_error: OnError::Tempfail,
        reuse_instances,
        memory_limit: fixture.memory_limit.unwrap_or(Bytes(64 << 20)),
        time_limit: fixture
            .time_limit
            .unwrap_or(Seconds(std::time::Duration::from_millis(500))),
        grants: fixture.grants.clone(),
        dns_time_limit: Seconds(std::time::Duration::from_secs(5)),
    };
    let runtime = crate::plugin::Runtime::new(
        &Wasm {
            max_instances: 64,
            ..Wasm::default()
        },
        cache,
        std::slice::from_ref(&def),
    )
    .await?;
    Ok((fixture, def, runtime))
}

async fn run_fixture(
    plugin: Option<&Path>,
    path: &Path,
    cache: &CacheSetting,
) -> anyhow::Result<usize> {
    let (fixture, def, runtime) = load(plugin, path, cache, false).await?;
    let base = path.parent().unwrap_or(Path::new("."));
    let wasm = def.path.clone();
    println!("# {} with {}", path.display(), wasm.display());
    let mut failed = 0;
    for case in &fixture.cases {
        let smtp = crate::config::Smtp::default();
        let limits = HeaderLimits {
            fields: fixture.max_header_fields.unwrap_or(smtp.max_header_fields),
            bytes: usize::try_from(fixture.max_header_size.unwrap_or(smtp.max_header_size).0)
                .unwrap_or(usize::MAX),
        };
        match run_case(&runtime, &def, &fixture.config, case, base, limits).await {
            Ok(()) => println!("ok   - {}", case.name),
            Err(e) => {
                failed += 1;
                println!("FAIL - {}: {e:#}", case.name);
            }
        }
    }
    println!("# {} passed, {failed} failed", fixture.cases.len() - failed);
    Ok(failed)
}

/// A case turned into what the chain runner takes.
pub(super) struct Prepared {
    pub(super) stage: Stage,
    pub(super) chains: Arc<Chains>,
    pub(super) session: Arc<SessionInfo>,
    pub(super) envelope: Arc<EnvelopeInfo>,
    pub(super) recipient: Option<String>,
    pub(super) rcpt_params: Vec<(String, Option<String>)>,
    pub(super) message: Option<Arc<Vec<u8>>>,
}

impl Prepared {
    /// The runner's input for this case.
    pub(super) fn input(&self) -> Input<'_> {
        Input {
            session: Some(self.session.clone()),
            envelope: (!matches!(self.stage, Stage::Connect | Stage::Helo))
                .then(|| self.envelope.clone()),
            recipient: self.recipient.as_deref(),
            rcpt_params: &self.rcpt_params,
            message: self.message.clone(),
        }
    }
}

pub(super) async fn prepare(
    runtime: &Arc<crate::plugin::Runtime>,
    def: &PluginDef,
    config: &toml::Table,
    case: &Case,
    base: &Path,
) -> anyhow::Result<Prepared> {
    let st = stage(&case.stage)?;
    let entry = ChainEntry::Wasm(WasmEntry {
        plugin: def.name.clone(),
        name: Some("under-test".into()),
        config: case.config.as_ref().unwrap_or(config).clone(),
        kv_namespace: None,
    });
    let mut chain = ChainConfig::default();
    match st {
        Stage::Connect => chain.connect.push(entry),
        Stage::Helo => chain.helo.push(entry),
        Stage::Mail => chain.mail.push(entry),
        Stage::Rcpt => chain.rcpt.push(entry),
        Stage::Data => chain.data.push(entry),
    }
    let chains = Chains::build_from(std::slice::from_ref(def), &chain, Some(runtime)).await?;
    let session = SessionInfo {
        id: "TEST".into(),
        listener: case.listener.clone(),
        client_ip: case.client_ip.clone(),
        client_port: 40000,
        client_rdns: match &case.client_ptr {
            Some(name) => crate::dns::Rdns::Confirmed(name.clone()),
            None => crate::dns::Rdns::None,
        },
        trusted: case.trusted,
        helo: case.helo.clone(),
        tls: None,
        auth_user: case.auth_user.clone(),
    };
    let (before, recipient) = match (st, case.rcpt_to.split_last()) {
        (Stage::Rcpt, Some((last, before))) => (before.to_vec(), Some(last.clone())),
        _ => (case.rcpt_to.clone(), None),
    };
    let envelope = EnvelopeInfo {
        queue_id: "0000000000000000".into(),
        mail_from: case.mail_from.clone(),
        mail_params: Vec::new(),
        rcpt_to: before,
    };
    let message = match (&case.message, &case.message_text) {
        (Some(p), _) => Some(
            std::fs::read(base.join(p)).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        (None, Some(t)) => Some(t.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes()),
        (None, None) => None,
    };
    Ok(Prepared {
        stage: st,
        chains: Arc::new(chains),
        session: Arc::new(session),
        envelope: Arc::new(envelope),
        recipient,
        rcpt_params: case
            .rcpt_params
            .iter()
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_ascii_uppercase(), Some(v.to_string())),
                None => (p.to_ascii_uppercase(), None),
            })
            .collect(),
        message: message.map(Arc::new),
    })
}

async fn run_case(
    runtime: &Arc<crate::plugin::Runtime>,
    def: &PluginDef,
    config: &toml::Table,
    case: &Case,
    base: &Path,
    limits: HeaderLimits,
) -> anyhow::Result<()> {
    let prepared = prepare(runtime, def, config, case, base).await?;
    // What the daemon refuses at the end of data never reaches a filter.
    let refused = prepared
        .message
        .as_deref()
        .and_then(|m| check_header(m, limits).err())
        .map(|e| Decision {
            entry: Arc::from("host"),
            verdict: Verdict::Reject(e.reply()),
        });
    let result = match refused {
        Some(decision) => StageResult {
            decision: Some(decision),
            ..StageResult::default()
        },
        None => {
            let mut runner = PluginSession::new(prepared.chains.clone());
            runner.run(prepared.stage, &prepared.input(), "TEST").await
        }
    };
    let (verdict, reply_code, enhanced, text) = match result.decision.map(|d| d.verdict) {
        None => ("continue", None, None, String::new()),
        Some(Verdict::Continue) => ("continue", None, None, String::new()),
        Some(Verdict::Accept) => ("accept", None, None, String::new()),
        Some(Verdict::Reject(r)) => (
            "reject",
            Some(r.code),
            r.enhanced.map(|e| e.to_string()),
            r.lines.join(" "),
        ),
        // A failed call: on_error is tempfail here (see `load`).
        Some(Verdict::Tempfail(r)) => (
            if result.failures.is_empty() {
                "tempfail"
            } else {
                "failure"
            },
            Some(r.code),
            r.enhanced.map(|e| e.to_string()),
            r.lines.join(" "),
        ),
        Some(Verdict::Discard(w)) => ("discard", None, None, w),
        Some(Verdict::Quarantine(w)) => ("quarantine", None, None, w),
    };
    let e = &case.expect;
    let mut problems = Vec::new();
    if e.verdict != verdict {
        problems.push(format!("verdict {verdict} (expected {})", e.verdict));
    }
    if let Some(kind) = e.failure {
        let got: Vec<&str> = result.failures.iter().map(|f| f.kind().name()).collect();
        if !result.failures.iter().any(|f| f.kind() == kind) {
            problems.push(format!(
                "failures {got:?} (expected a {} failure)",
                kind.name()
            ));
        }
    }
    if let Some(c) = e.code
        && reply_code != Some(c)
    {
        problems.push(format!("code {reply_code:?} (expected {c})"));
    }
    if let Some(x) = &e.enhanced
        && enhanced.as_deref() != Some(x.as_str())
    {
        problems.push(format!("enhanced code {enhanced:?} (expected {x})"));
    }
    if let Some(t) = &e.text
        && !text.contains(t.as_str())
    {
        problems.push(format!("text {text:?} does not contain {t:?}"));
    }
    for (sym, points) in &e.scores {
        match result.scores.iter().find(|s| &s.symbol == sym) {
            Some(s) if (s.points - points).abs() < 1e-9 => {}
            Some(s) => problems.push(format!("score {sym}={} (expected {points})", s.points)),
            None => problems.push(format!("no score {sym}")),
        }
    }
    for h in &e.headers {
        // "Name" asks for the field, "Name: value" for it with that value.
        let (want_name, want_value) = match h.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (h.trim(), None),
        };
        let found = result.actions.iter().any(|a| match a {
            HeaderAction::Add { name, value } | HeaderAction::Change { name, value, .. } => {
                name.eq_ignore_ascii_case(want_name) && want_value.is_none_or(|v| value == v)
            }
            HeaderAction::Remove { .. } => false,
        });
        if !found {
            problems.push(format!("no header {h:?} added"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", problems.join("; "))
    }
}
