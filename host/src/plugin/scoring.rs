//! Policy weighting: scores from every plugin and stage add up over the
//! transaction and are judged against `[scoring]` thresholds.

use super::outcome::Score;
use crate::config::Scoring;
use crate::smtp::reply::{Reply, r};

/// Sum of the points.
pub fn total(scores: &[Score]) -> f64 {
    scores.iter().map(|s| s.points).sum()
}

/// `SYMBOL=1.50 OTHER=-0.50`, policyd-weight style.
pub fn breakdown(scores: &[Score]) -> String {
    scores
        .iter()
        .map(|s| format!("{}={:.2}", s.symbol, s.points))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The reply the total leads to, if any threshold is reached.
pub fn judge(scores: &[Score], cfg: &Scoring) -> Option<Reply> {
    if scores.is_empty() {
        return None;
    }
    let t = total(scores);
    if let Some(limit) = cfg.reject
        && t >= limit
    {
        return Some(r(
            554,
            5,
            7,
            1,
            format!("Message rejected: policy score {t:.2} reaches {limit:.2}"),
        ));
    }
    if let Some(limit) = cfg.tempfail
        && t >= limit
    {
        return Some(r(
            451,
            4,
            7,
            1,
            format!("Policy score {t:.2} too high, try again later"),
        ));
    }
    None
}

/// The `X-Postern-Score` header value: total and breakdown.
pub fn header_value(scores: &[Score]) -> String {
    let parts: Vec<String> = scores
        .iter()
        .map(|s| format!("{}={:.2}", s.symbol, s.points))
        .collect();
    format!("{:.2} ({})", total(scores), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn s(sym: &str, p: f64) -> Score {
        Score {
            symbol: sym.into(),
            points: p,
            detail: None,
            entry: Arc::from("t"),
        }
    }

    #[test]
    fn thresholds() {
        let cfg = Scoring {
            reject: Some(10.0),
            tempfail: Some(5.0),
            add_header: true,
        };
        assert!(judge(&[], &cfg).is_none());
        assert!(judge(&[s("A", 4.0)], &cfg).is_none());
        assert_eq!(
            judge(&[s("A", 4.0), s("B", 1.0)], &cfg).map(|r| r.code),
            Some(451)
        );
        assert_eq!(
            judge(&[s("A", 4.0), s("B", 7.0)], &cfg).map(|r| r.code),
            Some(554)
        );
        assert_eq!(breakdown(&[s("A", 4.0), s("B", -1.5)]), "A=4.00 B=-1.50");
        assert_eq!(
            header_value(&[s("A", 4.0), s("B", -1.5)]),
            "2.50 (A=4.00, B=-1.50)"
        );
    }
}
