//! Parsing one command line into a typed [`Command`] (RFC 5321 §4.1).

use super::address::{
    self, AddressError, ForwardPath, ReversePath, parse_forward_path, parse_reverse_path,
    split_path,
};
use super::reply::{Reply, r};
use crate::dsn::params::{DsnError, RcptDsn, Ret, parse_envid, parse_ret};

/// The BODY= parameter of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// No BODY parameter or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// ESMTP parameters of MAIL FROM that Postern understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// Declared message size (RFC 1870).
    pub size: Option<u64>,
    /// Declared body type.
    pub body: Body,
    /// RFC 6531 internationalised envelope.
    pub smtputf8: bool,
    /// RFC 4954 `AUTH=` submitter, kept for the trace.
    pub auth: Option<String>,
    /// RFC 3461 `RET=`: what a failure report carries of the message.
    pub ret: Option<Ret>,
    /// RFC 3461 `ENVID=`, decoded from xtext.
    pub envid: Option<String>,
}

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path> params`.
    Mail(ReversePath, MailParams),
    /// `RCPT TO:<path> params` (only the parameters in [`RCPT_PARAMS`]).
    Rcpt(ForwardPath, EsmtpParams),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// True for the final chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP [topic]`.
    Help,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// Mechanism name in upper case.
        mechanism: String,
        /// Initial response (base64 or `=`), if any.
        initial: Option<String>,
    },
}

impl Command {
    /// The verb for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail(..) => "MAIL",
            Command::Rcpt(..) => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Help => "HELP",
            Command::Vrfy(_) => "VRFY",
            Command::Expn => "EXPN",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }
}

/// Why a command line could not be parsed; [`CommandError::reply`] is the
/// one place these become SMTP replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown verb.
    #[error("unrecognized command")]
    Unknown,
    /// HTTP and similar verbs: a browser or proxy abuse, not an SMTP client.
    #[error("non-SMTP command")]
    Forbidden,
    /// Line is not valid UTF-8 or contains control characters.
    #[error("invalid characters in command")]
    BadCharacters,
    /// Wrong or missing arguments.
    #[error("syntax error in arguments: {0}")]
    Syntax(&'static str),
    /// Bad sender address.
    #[error("bad sender address: {0}")]
    Sender(AddressError),
    /// Bad recipient address.
    #[error("bad recipient address: {0}")]
    Recipient(AddressError),
    /// Unknown or malformed ESMTP parameter.
    #[error("unsupported parameter {0}")]
    Parameter(String),
    /// A DSN parameter (RFC 3461) with a value it cannot have.
    #[error("bad DSN parameter: {0}")]
    Dsn(DsnError),
}

impl CommandError {
    /// The SMTP reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => r(500, 5, 5, 2, "Error: command not recognized"),
            CommandError::Forbidden => r(521, 5, 7, 0, "Error: non-SMTP command, closing"),
            CommandError::BadCharacters => r(500, 5, 5, 2, "Error: invalid characters in command"),
            CommandError::Syntax(what) => r(501, 5, 5, 4, format!("Syntax: {what}")),
            CommandError::Sender(AddressError::NeedsUtf8)
            | CommandError::Recipient(AddressError::NeedsUtf8) => r(
                553,
                5,
                6,
                7,
                "Non-ASCII address requires the SMTPUTF8 parameter",
            ),
            CommandError::Sender(e) => r(501, 5, 1, 7, format!("Bad sender address syntax: {e}")),
            CommandError::Recipient(e) => {
                r(501, 5, 1, 3, format!("Bad recipient address syntax: {e}"))
            }
            CommandError::Parameter(p) => r(555, 5, 5, 4, format!("Unsupported parameter {p}")),
            CommandError::Dsn(e) => r(501, 5, 5, 4, format!("Bad parameter syntax: {e}")),
        }
    }
}

/// Options that change how strictly commands are parsed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// RFC 821 envelopes: addresses must be in angle brackets.
    pub strict_envelopes: bool,
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8], opts: ParseOptions) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::BadCharacters);
    }
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, arg) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    let arg = arg.trim_start_matches([' ', '\t']);
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "EHLO" | "HELO" => {
            let name = arg.split_whitespace().next().unwrap_or("");
            if name.is_empty() {
                return Err(CommandError::Syntax("EHLO/HELO requires a domain name"));
            }
            let name = name.to_string();
            Ok(if upper == "EHLO" {
                Command::Ehlo(name)
            } else {
                Command::Helo(name)
            })
        }
        "MAIL" => parse_mail(arg, opts),
        "RCPT" => parse_rcpt(arg, opts),
        "DATA" => no_args(arg, Command::Data, "DATA takes no arguments"),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_args(arg, Command::Rset, "RSET takes no arguments"),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => Ok(Command::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            if arg.is_empty() {
                Err(CommandError::Syntax("VRFY address"))
            } else {
                Ok(Command::Vrfy(arg.to_string()))
            }
        }
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_args(arg, Command::StartTls, "STARTTLS takes no arguments"),
        "AUTH" => {
            let mut it = arg.split_whitespace();
            let mechanism = it
                .next()
                .ok_or(CommandError::Syntax("AUTH mechanism [initial-response]"))?
                .to_ascii_uppercase();
            let initial = it.next().map(str::to_string);
            if it.next().is_some() {
                return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "CONNECT" | "GET" | "POST" | "PUT" | "HEAD" | "USER" => Err(CommandError::Forbidden),
        _ => Err(CommandError::Unknown),
    }
}

fn no_args(arg: &str, cmd: Command, msg: &'static str) -> Result<Command, CommandError> {
    if arg.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(msg))
    }
}

/// Strips a case-insensitive keyword such as `FROM:` from the argument.
fn keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    let (head, rest) = arg.split_at_checked(kw.len())?;
    head.eq_ignore_ascii_case(kw).then_some(rest)
}

fn parse_mail(arg: &str, opts: ParseOptions) -> Result<Command, CommandError> {
    let rest = keyword(arg, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
    // `MAIL FROM:` with nothing is no path at all, not the null sender
    // (`<>`), even where brackets may be left out.
    if rest.trim().is_empty() {
        return Err(CommandError::Syntax("MAIL FROM:<address>"));
    }
    let (path, params) = split_path(rest, opts.strict_envelopes).map_err(CommandError::Sender)?;
    let mut mp = MailParams::default();
    let mut seen: Vec<String> = Vec::new();
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let key = key.to_ascii_uppercase();
        if seen.contains(&key) {
            return Err(CommandError::Syntax("each MAIL parameter once"));
        }
        seen.push(key.clone());
        match (key.as_str(), value) {
            ("SIZE", None) => return Err(CommandError::Syntax("SIZE=<number>")),
            ("SIZE", Some(v)) => {
                mp.size = Some(
                    v.parse()
                        .map_err(|_| CommandError::Syntax("SIZE=<number>"))?,
                );
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => mp.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => mp.body = Body::EightBitMime,
            ("SMTPUTF8", None) => mp.smtputf8 = true,
            ("AUTH", Some(v)) => mp.auth = Some(v.to_string()),
            ("RET", v) => mp.ret = Some(parse_ret(v.unwrap_or("")).map_err(CommandError::Dsn)?),
            ("ENVID", v) => {
                mp.envid = Some(parse_envid(v.unwrap_or("")).map_err(CommandError::Dsn)?);
            }
            _ => return Err(CommandError::Parameter(param.to_string())),
        }
    }
    let from = parse_reverse_path(path, mp.smtputf8).map_err(CommandError::Sender)?;
    Ok(Command::Mail(from, mp))
}

/// ESMTP parameters as given: keyword (upper case) and value.
pub type EsmtpParams = Vec<(String, Option<String>)>;

/// RCPT TO parameters Postern accepts: DSN's NOTIFY and ORCPT (RFC 3461),
/// checked here and kept with the recipient; the parameters accepted reach
/// the RCPT hook of the plugins as given.
pub const RCPT_PARAMS: &[&str] = &["NOTIFY", "ORCPT"];

fn parse_rcpt(arg: &str, opts: ParseOptions) -> Result<Command, CommandError> {
    let rest = keyword(arg, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
    let (path, params) =
        split_path(rest, opts.strict_envelopes).map_err(CommandError::Recipient)?;
    let params = esmtp_params(params, RCPT_PARAMS)?;
    RcptDsn::from_params(&params).map_err(CommandError::Dsn)?;
    // The session rejects non-ASCII recipients later unless MAIL had SMTPUTF8.
    let to = parse_forward_path(path, true).map_err(CommandError::Recipient)?;
    Ok(Command::Rcpt(to, params))
}

/// The `KEYWORD[=value]` parameters after a path, each of `known` at most
/// once; any other keyword is refused (RFC 5321 §4.1.1.11: `555`).
fn esmtp_params(text: &str, known: &[&str]) -> Result<EsmtpParams, CommandError> {
    let mut out: EsmtpParams = Vec::new();
    for param in text.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v.to_string())),
            None => (param.to_ascii_uppercase(), None),
        };
        if !known.contains(&key.as_str()) {
            return Err(CommandError::Parameter(param.to_string()));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(CommandError::Syntax("each RCPT parameter once"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut it = arg.split_whitespace();
    let size = it
        .next()
        .and_then(|s| {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().ok()
            } else {
                None
            }
        })
        .ok_or(CommandError::Syntax("BDAT size [LAST]"))?;
    let last = match it.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("BDAT size [LAST]")),
    };
    if it.next().is_some() {
        return Err(CommandError::Syntax("BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

/// Checks a recipient against the transaction's SMTPUTF8 flag.
pub fn check_rcpt_utf8(to: &ForwardPath, smtputf8: bool) -> Result<(), CommandError> {
    match to {
        ForwardPath::Mailbox(m) if m.is_utf8() && !smtputf8 => {
            Err(CommandError::Recipient(AddressError::NeedsUtf8))
        }
        _ => Ok(()),
    }
}

/// Re-exported for the HELO stage.
pub use address::check_helo;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn code_of(parsed: Result<Command, CommandError>) -> u16 {
        parsed.map_or_else(|e| e.reply().code, |_| 250)
    }

    fn p(line: &str) -> Result<Command, CommandError> {
        parse(line.as_bytes(), ParseOptions::default())
    }

    fn strict(line: &str) -> Result<Command, CommandError> {
        parse(
            line.as_bytes(),
            ParseOptions {
                strict_envelopes: true,
            },
        )
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            p("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(p("QuIt"), Ok(Command::Quit));
        assert_eq!(p("noop whatever"), Ok(Command::Noop));
    }

    #[test]
    fn mail_params() {
        let Ok(Command::Mail(ReversePath::Mailbox(m), params)) =
            p("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME")
        else {
            panic!("not parsed");
        };
        assert_eq!(m.to_string(), "a@b.test");
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Body::EightBitMime);
        let Ok(Command::Mail(ReversePath::Null, dsn)) = p("MAIL FROM:<> RET=hdrs ENVID=a+2Bb")
        else {
            panic!("DSN parameters not parsed");
        };
        assert_eq!(
            (dsn.ret, dsn.envid.as_deref()),
            (Some(Ret::Hdrs), Some("a+b"))
        );
        assert_eq!(
            p("MAIL FROM:<> RET=SOME"),
            Err(CommandError::Dsn(DsnError::Ret))
        );
        assert_eq!(code_of(p("MAIL FROM:<> RET=SOME")), 501);
        assert_eq!(
            p("mail from: <>"),
            Ok(Command::Mail(ReversePath::Null, MailParams::default()))
        );
        // No path at all is not the null sender.
        for line in ["MAIL FROM:", "MAIL FROM:   "] {
            assert_eq!(p(line), Err(CommandError::Syntax("MAIL FROM:<address>")));
        }
        assert_eq!(
            p("MAIL FROM:<a@b.test> SIZE=10 size=20"),
            Err(CommandError::Syntax("each MAIL parameter once"))
        );
        assert_eq!(
            p("MAIL FROM:<a@b.test> SIZE"),
            Err(CommandError::Syntax("SIZE=<number>"))
        );
    }

    #[test]
    fn strict_envelopes_need_brackets() {
        assert!(p("MAIL FROM:a@b.test").is_ok());
        assert_eq!(
            strict("MAIL FROM:a@b.test"),
            Err(CommandError::Sender(AddressError::NeedsBrackets))
        );
        assert!(strict("RCPT TO:<a@b.test>").is_ok());
    }

    #[test]
    fn bdat_and_errors() {
        assert_eq!(
            p("BDAT 100 LAST"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert!(p("BDAT -1").is_err());
        assert!(p("BDAT 10 MORE").is_err());
        assert_eq!(
            p("DATA x"),
            Err(CommandError::Syntax("DATA takes no arguments"))
        );
        assert_eq!(p("GET / HTTP/1.1"), Err(CommandError::Forbidden));
        assert_eq!(p("FOO"), Err(CommandError::Unknown));
        assert_eq!(p("NOOP \u{1}"), Err(CommandError::BadCharacters));
        assert_eq!(
            parse(b"NOOP \xff", ParseOptions::default()),
            Err(CommandError::BadCharacters)
        );
    }

    #[test]
    fn rcpt_postmaster_and_params() {
        assert_eq!(
            p("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(ForwardPath::Postmaster, vec![]))
        );
        assert_eq!(
            p("RCPT TO:<a@b.test> NOTIFY=NEVER ORCPT=rfc822;a@b.test"),
            Ok(Command::Rcpt(
                ForwardPath::Mailbox(Mailbox {
                    local: "a".into(),
                    domain: "b.test".into()
                }),
                vec![
                    ("NOTIFY".into(), Some("NEVER".into())),
                    ("ORCPT".into(), Some("rfc822;a@b.test".into())),
                ]
            ))
        );
        assert_eq!(
            p("RCPT TO:<a@b.test> NOTIFY=SOMETIMES"),
            Err(CommandError::Dsn(DsnError::Notify))
        );
        assert_eq!(code_of(p("RCPT TO:<a@b.test> ORCPT=x")), 501);
        assert_eq!(
            p("RCPT TO:<a@b.test> RET=FULL"),
            Err(CommandError::Parameter("RET=FULL".into()))
        );
    }

    #[test]
    fn rcpt_parameters_that_are_known_are_kept_in_order() {
        // What parse_rcpt does once DSN adds NOTIFY and ORCPT.
        let known = ["NOTIFY", "ORCPT"];
        assert_eq!(
            esmtp_params(" notify=SUCCESS,DELAY  ORCPT=rfc822;a@b.test", &known),
            Ok(vec![
                ("NOTIFY".into(), Some("SUCCESS,DELAY".into())),
                ("ORCPT".into(), Some("rfc822;a@b.test".into())),
            ])
        );
        assert_eq!(esmtp_params("", &known), Ok(vec![]));
        assert_eq!(
            esmtp_params("NOTIFY=NEVER NOTIFY=NEVER", &known),
            Err(CommandError::Syntax("each RCPT parameter once"))
        );
        assert_eq!(
            esmtp_params("NOTIFY=NEVER RET=HDRS", &known),
            Err(CommandError::Parameter("RET=HDRS".into()))
        );
    }
}
