//! Property tests: the SASL mechanisms take any client input without
//! panicking, and a client that does not know the secret never gets
//! `Success` from the challenge-response mechanisms.

use proptest::prelude::*;

use super::Output;
use super::cram_md5::CramMd5;
use super::login::Login;
use super::plain::Plain;
use super::scram::{ScramKeys, ScramSha256};

fn responses() -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
    let one = prop_oneof![
        Just(None),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(Some),
        // Plausible SCRAM and PLAIN shapes, so later states are reached.
        "n,,n=[a-z]{1,8},r=[A-Za-z0-9]{1,24}".prop_map(|s| Some(s.into_bytes())),
        "c=biws,r=[A-Za-z0-9]{1,40},p=[A-Za-z0-9+/=]{0,44}".prop_map(|s| Some(s.into_bytes())),
        "[a-z]{0,8}\u{0}[a-z]{1,8}\u{0}[a-z]{0,8}".prop_map(|s| Some(s.into_bytes())),
    ];
    prop::collection::vec(one, 0..6)
}

/// Steps a mechanism through the responses; `creds` answers
/// `NeedCredentials`. Returns true if it ever reported success.
fn drive(
    mut step: impl FnMut(Option<&[u8]>) -> Output,
    mut creds: impl FnMut(&str) -> Output,
    inputs: &[Option<Vec<u8>>],
) -> bool {
    for input in inputs {
        let mut out = step(input.as_deref());
        if let Output::NeedCredentials { user } = &out {
            out = creds(&user.clone());
        }
        match out {
            Output::Success(_) => return true,
            Output::Failure(_) | Output::CheckPassword { .. } => return false,
            _ => {}
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn plain_and_login_take_any_input(inputs in responses()) {
        let mut p = Plain::new();
        drive(|r| p.step(r), |_| Output::Failure("no".into()), &inputs);
        let mut l = Login::new();
        drive(|r| l.step(r), |_| Output::Failure("no".into()), &inputs);
    }

    #[test]
    fn cram_md5_never_succeeds_without_the_secret(inputs in responses()) {
        let m = std::cell::RefCell::new(CramMd5::new(b"<1.2@mx.example.test>".to_vec()));
        let ok = drive(
            |r| m.borrow_mut().step(r),
            |user| m.borrow_mut().credentials(user, Some(b"the secret")),
            &inputs,
        );
        prop_assert!(!ok);
    }

    #[test]
    fn scram_never_succeeds_without_the_password(inputs in responses()) {
        let keys = ScramKeys::derive(b"the password", b"salt1234", 4096);
        let m = std::cell::RefCell::new(ScramSha256::new("servernonce".into()));
        let ok = drive(
            |r| m.borrow_mut().step(r),
            |user| m.borrow_mut().credentials(user, &keys),
            &inputs,
        );
        prop_assert!(!ok);
    }
}
