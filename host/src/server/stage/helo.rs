//! The HELO stage: the HELO chain and the scores, for each new greeting.

use std::sync::Arc;

use super::{Decision, Judge, SmtpSession};
use crate::plugin::Stage;
use crate::server::generation::Generation;

impl Judge {
    /// Judges a new greeting `name`. What plugins say of it replaces what
    /// they said of the previous one. A refusal leaves the previous
    /// greeting in place; with `delay_reject` it is held back until RCPT
    /// instead, and the greeting is accepted.
    pub async fn helo(
        &mut self,
        generation: &Generation,
        session: &mut SmtpSession,
        name: &str,
    ) -> Decision<()> {
        // A greeting ends any transaction (the session reset it already):
        // its scores must not judge the greeting. (Before any MAIL there is
        // none: the instances made at connect serve the first one.)
        if self.in_transaction {
            self.end_transaction();
        }
        Arc::make_mut(&mut self.info).helo = Some(name.to_string());
        self.helo_reject = None;
        let previous = std::mem::take(&mut self.helo_policy);
        if self.plugins.has(Stage::Helo) {
            let context = self.info.id.clone();
            let result = self
                .run_chain(session, Stage::Helo, &context, None, None, None)
                .await;
            let refusal = self
                .absorb(Stage::Helo, &context, result)
                .or_else(|| self.judge_scores(generation, Stage::Helo, &context));
            if let Some(refusal) = refusal {
                if !generation.config.smtp.delay_reject {
                    session.delayed_reject = self.connect_reject.clone();
                    // Refused: the greeting the session keeps, and what
                    // plugins said of it, stand.
                    Arc::make_mut(&mut self.info).helo =
                        session.greeting.as_ref().map(|g| g.name.clone());
                    self.helo_policy = previous;
                    return Err(refusal);
                }
                self.helo_reject = Some(refusal.reply);
            }
        }
        session.delayed_reject = self.connect_reject.clone().or(self.helo_reject.clone());
        Ok(())
    }
}
