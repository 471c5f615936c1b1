//! Test plugin: a health policy whose probe verdict comes from the endpoint itself, like
//! HAProxy's agent-check. A probe answer's `x-health` header says `up` (pass), `down` (fail),
//! `eject` (out at once) or `trap` (the plugin panics: the host must fall back to its own rule);
//! without the header it abstains. Real requests answered 418 eject the endpoint; others abstain.

use sluicegate_sdk::{HealthPolicy, Outcome, ProbeResult, Verdict};

/// No state, no settings.
pub struct HeaderSays;

impl HealthPolicy for HeaderSays {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(HeaderSays)
    }

    fn judge_probe(&mut self, result: &ProbeResult) -> Verdict {
        let said = result
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-health"))
            .map(|(_, v)| v.as_str());
        match said {
            Some("up") => Verdict::Pass,
            Some("down") => Verdict::Fail,
            Some("eject") => Verdict::Eject,
            Some("trap") => panic!("asked to trap"),
            _ => Verdict::Abstain,
        }
    }

    fn observe(&mut self, outcome: &Outcome) -> Verdict {
        if outcome.status == Some(418) {
            Verdict::Eject
        } else {
            Verdict::Abstain
        }
    }
}

sluicegate_sdk::export_health_policy!(HeaderSays);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::HealthHarness;

    fn probe(header: Option<&str>) -> ProbeResult {
        ProbeResult {
            endpoint: 0,
            status: Some(200),
            headers: header
                .map(|v| vec![("X-Health".to_string(), v.to_string())])
                .unwrap_or_default(),
            body_prefix: Vec::new(),
            failure: None,
            duration_micros: 10,
        }
    }

    #[test]
    fn the_header_decides_and_its_absence_abstains() {
        let mut h = HealthHarness::<HeaderSays>::init("").unwrap();
        assert_eq!(h.judge_probe(&probe(Some("up"))), Verdict::Pass);
        assert_eq!(h.judge_probe(&probe(Some("down"))), Verdict::Fail);
        assert_eq!(h.judge_probe(&probe(Some("eject"))), Verdict::Eject);
        assert_eq!(h.judge_probe(&probe(None)), Verdict::Abstain);
        let outcome = |status| Outcome {
            endpoint: 0,
            status: Some(status),
            failure: None,
            duration_micros: 10,
        };
        assert_eq!(h.observe(&outcome(418)), Verdict::Eject);
        assert_eq!(h.observe(&outcome(500)), Verdict::Abstain);
    }
}
