//! The connect stage: the connect chain, then the scores, before the
//! greeting.

use super::{Decision, Judge, SmtpSession};
use crate::plugin::Stage;
use crate::server::generation::Generation;

impl Judge {
    /// Judges the new connection. A refusal ends the session before the
    /// greeting, unless `delay_reject` holds it back until RCPT (where
    /// clients handle it best): then the session goes on.
    pub async fn connect(
        &mut self,
        generation: &Generation,
        session: &mut SmtpSession,
    ) -> Decision<()> {
        if !self.plugins.has(Stage::Connect) {
            return Ok(());
        }
        let context = self.info.id.clone();
        let result = self
            .run_chain(session, Stage::Connect, &context, None, None, None)
            .await;
        let refusal = self
            .absorb(Stage::Connect, &context, result)
            .or_else(|| self.judge_scores(generation, Stage::Connect, &context));
        let Some(refusal) = refusal else {
            return Ok(());
        };
        if generation.config.smtp.delay_reject {
            self.connect_reject = Some(refusal.reply);
            session.delayed_reject = self.connect_reject.clone().or(self.helo_reject.clone());
            return Ok(());
        }
        Err(refusal)
    }
}
