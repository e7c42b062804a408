//! Test fixture: a plugin built against `wit/` as it was at
//! `postern:filter@0.2.0` (the copy in `tests/plugins/frozen/wit`, never
//! edited), without the SDK. Every later 0.2.x host must load and run it
//! unchanged: that is the contract's promise (`wit/README.md`, Evolution
//! rules).
//!
//! RCPT: a recipient starting with `frozen-reject` is refused with the
//! RCPT parameters in the reply text; any other gets a score. DATA: adds
//! `X-Frozen: fields=N subject=S body=B` (from `headers()`, `header()`
//! and `read-body`) through the 0.2.0 `outcome.actions`.

#![allow(missing_docs)]
// wit-bindgen's export glue uses `export_name` and unsafe ABI code.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    inline: "
        package test:frozen;
        world frozen {
            include postern:filter/rcpt-plugin@0.2.0;
            include postern:filter/data-plugin@0.2.0;
        }
    ",
    path: "wit",
    world: "test:frozen/frozen",
    generate_all,
});

use exports::postern::filter::{data_hook, rcpt_hook};
use postern::filter::host;
use postern::filter::types::{
    Action, Envelope, Header, Message, Outcome, Param, Reply, Score, Session, Verdict,
};

struct Frozen;

fn outcome(verdict: Verdict) -> Outcome {
    Outcome {
        verdict,
        scores: Vec::new(),
        actions: Vec::new(),
    }
}

impl rcpt_hook::Guest for Frozen {
    fn on_rcpt(_: &Session, envelope: &Envelope, recipient: String, params: Vec<Param>) -> Outcome {
        if recipient.starts_with("frozen-reject") {
            let params: Vec<String> = params
                .iter()
                .map(|p| match &p.value {
                    Some(v) => format!("{}={v}", p.name),
                    None => p.name.clone(),
                })
                .collect();
            return outcome(Verdict::Reject(Reply {
                code: 550,
                enhanced: Some("5.7.1".into()),
                text: format!("frozen says no; params [{}]", params.join(" ")),
            }));
        }
        host::log(
            host::Level::Info,
            &format!("rcpt {recipient} after {} others", envelope.rcpt_count()),
        );
        let mut o = outcome(Verdict::Continue);
        o.scores.push(Score {
            symbol: "FROZEN_RCPT".into(),
            points: 0.5,
            detail: None,
        });
        o
    }
}

impl data_hook::Guest for Frozen {
    fn on_data(_: &Session, _: &Envelope, message: &Message) -> Outcome {
        let fields = message.headers().len();
        let subject = message.header("Subject").join(" ");
        let body = message.read_body(0, 64);
        let mut o = outcome(Verdict::Continue);
        o.actions.push(Action::AddHeader(Header {
            name: "X-Frozen".into(),
            value: format!(
                "fields={fields} subject={subject} body={}",
                String::from_utf8_lossy(&body).trim()
            ),
        }));
        o
    }
}

export!(Frozen);
