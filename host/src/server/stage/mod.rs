//! The decisions of an SMTP session, one file per stage; the driver
//! ([`super::connection`]) does the I/O and asks these for every verdict.
//!
//! - [`connect`]: the connect chain and scores; refuse before the
//!   greeting, or hold the refusal until RCPT (`delay_reject`).
//! - [`helo`]: the HELO chain for each new greeting; what it says stands
//!   until the next greeting or STARTTLS.
//! - [`mail`]: MAIL FROM: an authenticated client's right to the sender
//!   (`sender_logins`), the mail chain, the scores.
//! - [`rcpt`]: RCPT TO, after the protocol checks of [`crate::smtp`]
//!   (sequence, SMTPUTF8, recipient limit, rejects held back until RCPT):
//!   relay control, routing, the rcpt chain, the scores; and VRFY.
//! - [`data`]: end of data: header limits and hop count, the data chain,
//!   the scores, what becomes of the message (discard, hold), its
//!   recipients and the fields the host adds.
//!
//! A refusal says who made it ([`By`]): the host's own rules, a plugin's
//! chain entry, or the scores. The replies the host builds are in
//! [`super::reply`].

mod connect;
mod data;
mod helo;
mod mail;
mod policy;
mod rcpt;

use std::net::IpAddr;
use std::sync::Arc;

use super::generation::Generation;
use crate::plugin::{
    Decision as ChainDecision, EnvelopeInfo, Input, PluginSession, Score, SessionInfo, Stage,
    StageResult, Verdict, scoring,
};
use crate::route::Destination;
use crate::smtp::command::{EsmtpParams, MailParams};
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;

pub use data::recipients;
pub use policy::Disposition;
pub use rcpt::vrfy;

use policy::Policy;

/// The SMTP session as the driver keeps it: a recipient's route is the
/// list of its destinations.
pub type SmtpSession = Session<Vec<Destination>>;

/// Who made a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By {
    /// The host's own rules: relay control, routing, the sender's owner,
    /// header limits and hop count.
    Host,
    /// A plugin, by the label of its chain entry.
    Plugin(Arc<str>),
    /// The scores reached a threshold of `[scoring]`.
    Scores,
}

/// A refusal: the reply the client gets and who decided it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The reply.
    pub reply: Reply,
    /// Who refused.
    pub by: By,
}

impl Refusal {
    /// A refusal by the host's own rules.
    pub fn host(reply: Reply) -> Refusal {
        Refusal {
            reply,
            by: By::Host,
        }
    }

    /// ` plugin=LABEL` when a plugin refused, for the end of a log line.
    pub fn by_plugin(&self) -> String {
        match &self.by {
            By::Plugin(entry) => format!(" plugin={entry}"),
            By::Host | By::Scores => String::new(),
        }
    }
}

/// What a stage decided: go on (with what the stage gives, e.g. a
/// recipient's route), or refuse.
pub type Decision<T> = Result<T, Refusal>;

impl<T> From<Decision<T>> for crate::smtp::session::Decision<T> {
    /// The session state machine's form: the reply alone (who refused
    /// was logged where the refusal was decided).
    fn from(decision: Decision<T>) -> Self {
        match decision {
            Ok(t) => crate::smtp::session::Decision::Accept(t),
            Err(refusal) => crate::smtp::session::Decision::Reject(refusal.reply),
        }
    }
}

/// What the decisions of one session depend on besides the SMTP state:
/// its plugin instances, what plugins see of it, and what they said of
/// the connection, the greeting and the transaction.
pub struct Judge {
    /// Calls this generation's plugin chains.
    plugins: PluginSession,
    /// What plugins see of the session; shared with a stage's calls, so
    /// a stage costs no copy of it.
    info: Arc<SessionInfo>,
    /// The client's address.
    peer: IpAddr,
    /// `name[ip]` for log lines, like Postfix.
    client: String,
    /// Policy state of the session (connect), of the current greeting
    /// (HELO: replaced by each EHLO, forgotten at STARTTLS) and of the
    /// transaction.
    session_policy: Policy,
    helo_policy: Policy,
    tx_policy: Policy,
    /// Rejects held back until RCPT (delay_reject), by stage.
    connect_reject: Option<Reply>,
    helo_reject: Option<Reply>,
    /// The transaction's envelope as plugins see it, extended recipient
    /// by recipient instead of rebuilt at every RCPT.
    plugin_envelope: Option<Arc<EnvelopeInfo>>,
    /// A MAIL FROM was accepted and its transaction not yet ended.
    in_transaction: bool,
}

impl Judge {
    /// The judge of a new session of `generation`.
    pub fn new(generation: &Generation, info: SessionInfo, peer: IpAddr, client: String) -> Judge {
        Judge {
            plugins: PluginSession::new(generation.chains.clone()),
            info: Arc::new(info),
            peer,
            client,
            session_policy: Policy::default(),
            helo_policy: Policy::default(),
            tx_policy: Policy::default(),
            connect_reject: None,
            helo_reject: None,
            plugin_envelope: None,
            in_transaction: false,
        }
    }

    /// What plugins see of the session.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// TLS is up (at connect for implicit TLS, or after STARTTLS).
    pub fn tls(&mut self, tls: Option<(String, String)>) {
        Arc::make_mut(&mut self.info).tls = tls;
    }

    /// STARTTLS: the greeting is forgotten (RFC 3207), with what plugins
    /// said of it; what they said of the connection stands, a delayed
    /// reject included. The transaction, if any, ends.
    pub fn tls_started(&mut self, session: &mut SmtpSession, tls: Option<(String, String)>) {
        self.helo_policy = Policy::default();
        self.helo_reject = None;
        session.delayed_reject = self.connect_reject.clone();
        let info = Arc::make_mut(&mut self.info);
        info.tls = tls;
        info.helo = None;
        info.auth_user = None;
        self.end_transaction();
    }

    /// The client authenticated, or lost its authentication.
    pub fn authenticated(&mut self, user: Option<String>) {
        Arc::make_mut(&mut self.info).auth_user = user;
    }

    /// The session moves to a new generation (between transactions): its
    /// chains, listener name and trust. What the connect and HELO stages
    /// decided stands.
    pub fn renew(&mut self, generation: &Generation, listener: &str) {
        if self.in_transaction {
            self.end_transaction();
        }
        self.plugins = PluginSession::new(generation.chains.clone());
        let info = Arc::make_mut(&mut self.info);
        info.listener = listener.to_string();
        info.trusted = generation.router.is_trusted(self.peer);
    }

    /// Forgets the transaction's policy state and plugin instances.
    pub fn end_transaction(&mut self) {
        self.plugins.end_transaction();
        self.plugin_envelope = None;
        self.tx_policy = Policy::default();
        self.in_transaction = false;
    }

    /// Calls a stage's chain with the session and, when given, envelope,
    /// recipient (with its RCPT parameters) and message.
    async fn run_chain(
        &mut self,
        session: &SmtpSession,
        stage: Stage,
        context: &str,
        envelope: Option<Arc<EnvelopeInfo>>,
        recipient: Option<(&str, &EsmtpParams)>,
        message: Option<Arc<Vec<u8>>>,
    ) -> StageResult {
        if self.info.auth_user != session.auth_user {
            Arc::make_mut(&mut self.info).auth_user = session.auth_user.clone();
        }
        let input = Input {
            session: Some(self.info.clone()),
            envelope,
            recipient: recipient.map(|(to, _)| to),
            rcpt_params: recipient.map_or(&[], |(_, params)| params),
            message,
        };
        self.plugins.run(stage, &input, context).await
    }

    /// Takes a stage's scores and actions into the session, greeting or
    /// transaction policy, logs the chain's decision and returns its
    /// refusal (a reject or tempfail). Discard and quarantine become the
    /// disposition. An RCPT refusal is logged by the RCPT reject line.
    fn absorb(&mut self, stage: Stage, context: &str, result: StageResult) -> Option<Refusal> {
        // Connect speaks for the session, HELO for the greeting, the rest
        // for the transaction.
        let policy = match stage {
            Stage::Connect => &mut self.session_policy,
            Stage::Helo => &mut self.helo_policy,
            _ => &mut self.tx_policy,
        };
        // A refused recipient leaves nothing in the message it is not
        // part of.
        let refused = stage == Stage::Rcpt
            && matches!(
                &result.decision,
                Some(ChainDecision {
                    verdict: Verdict::Reject(_) | Verdict::Tempfail(_),
                    ..
                })
            );
        if !refused {
            policy.take(result.scores, result.actions);
        }
        let ChainDecision { entry, verdict } = result.decision?;
        match verdict {
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                if stage != Stage::Rcpt {
                    tracing::info!(
                        "{context}: reject: {} from {}: {}; plugin={entry}",
                        stage.command(),
                        self.client,
                        reply.summary()
                    );
                }
                Some(Refusal {
                    reply,
                    by: By::Plugin(entry),
                })
            }
            Verdict::Discard(why) => {
                tracing::info!(
                    "{context}: discard: {} from {}: {why}; plugin={entry}",
                    stage.command(),
                    self.client
                );
                policy.disposition = Some(Disposition::Discard(format!("{why} (plugin {entry})")));
                None
            }
            Verdict::Quarantine(why) => {
                tracing::info!(
                    "{context}: hold: {} from {}: {why}; plugin={entry}",
                    stage.command(),
                    self.client
                );
                policy.disposition =
                    Some(Disposition::Quarantine(format!("{why} (plugin {entry})")));
                None
            }
            Verdict::Accept => {
                tracing::debug!(
                    "{context}: accept: {} from {}; plugin={entry}",
                    stage.command(),
                    self.client
                );
                None
            }
            Verdict::Continue => None,
        }
    }

    /// All scores of the session, the greeting and the transaction.
    fn all_scores(&self) -> Vec<Score> {
        let mut all = self.session_policy.scores.clone();
        all.extend(self.helo_policy.scores.iter().cloned());
        all.extend(self.tx_policy.scores.iter().cloned());
        all
    }

    /// Judges the scores so far; logs and returns the refusal if a
    /// threshold is reached.
    fn judge_scores(
        &self,
        generation: &Generation,
        stage: Stage,
        context: &str,
    ) -> Option<Refusal> {
        let scores = self.all_scores();
        let reply = scoring::judge(&scores, &generation.config.scoring)?;
        tracing::info!(
            "{context}: score {:.2} ({}) at {}: {}",
            scoring::total(&scores),
            scoring::breakdown(&scores),
            stage.name(),
            reply.summary()
        );
        Some(Refusal {
            reply,
            by: By::Scores,
        })
    }

    /// The current transaction's envelope for plugins: brought up to date
    /// by appending the recipients accepted since the last stage (no copy
    /// while no plugin call holds it), rebuilt only for a new transaction.
    fn plugin_envelope(&mut self, session: &SmtpSession) -> Option<Arc<EnvelopeInfo>> {
        let tx = session.transaction()?;
        let env = match self.plugin_envelope.take() {
            Some(mut env) if env.queue_id == tx.id && env.rcpt_to.len() <= tx.rcpts.len() => {
                let have = env.rcpt_to.len();
                if have < tx.rcpts.len() {
                    Arc::make_mut(&mut env)
                        .rcpt_to
                        .extend(tx.rcpts[have..].iter().map(|r| r.path.to_string()));
                }
                env
            }
            _ => Arc::new(EnvelopeInfo {
                queue_id: tx.id.clone(),
                mail_from: tx.from.to_string(),
                mail_params: mail_params(&tx.params),
                rcpt_to: tx.rcpts.iter().map(|r| r.path.to_string()).collect(),
            }),
        };
        self.plugin_envelope = Some(env.clone());
        Some(env)
    }
}

/// MAIL FROM parameters as plugins see them.
fn mail_params(p: &MailParams) -> Vec<(String, Option<String>)> {
    let mut v = Vec::new();
    if let Some(size) = p.size {
        v.push(("SIZE".to_string(), Some(size.to_string())));
    }
    if p.body == crate::smtp::command::Body::EightBitMime {
        v.push(("BODY".to_string(), Some("8BITMIME".to_string())));
    }
    if p.smtputf8 {
        v.push(("SMTPUTF8".to_string(), None));
    }
    if let Some(auth) = &p.auth {
        v.push(("AUTH".to_string(), Some(auth.clone())));
    }
    v
}

#[cfg(test)]
mod tests;
