//! The answers to control commands, as typed values: what the daemon builds (see
//! [`crate::run`]'s `on_command`) and what `shadowctl` reads back ([`Reply::decode`]). One
//! definition for both ends, so a field cannot be written by one side and missed by the other.

use crate::{
    control::{Command, ErrorBody, ErrorKind, Response, Status},
    egress::EgressStatus,
    hub::{DaemonReport, RuleDiff, RuleEpoch},
    metrics::Summary,
};

/// A successful answer, by the command it answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `status`, and the state after `rate`, `pause`, `resume` and `reload`.
    Status(Box<Status>),
    /// `stats`.
    Stats(Box<Summary>),
    /// `report`.
    Report(Box<DaemonReport>),
    /// `diffs`: the mismatching pairs kept, per rule.
    Diffs(Vec<RuleDiff>),
    /// `reset`: the epochs that started.
    Reset(Vec<RuleEpoch>),
    /// `egress`, and the fences after `egress detach`.
    Egress(Box<EgressStatus>),
    /// `ramp`, and the ramps after `ramp start|pause|resume|abort`.
    Ramp(RampReply),
}

/// `shadowctl ramp --json`: `{"rules": [{"rule": "...", "state": "...", "step": 2, ...}]}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RampReply {
    pub rules: Vec<crate::ramp::RampStatus>,
}

impl Reply {
    /// The response line for an answer or an error.
    pub fn into_response(answer: Result<Self, ErrorBody>) -> Response {
        let data = match answer {
            Ok(Self::Status(s)) => serde_json::to_value(s),
            Ok(Self::Stats(s)) => serde_json::to_value(s),
            Ok(Self::Report(r)) => serde_json::to_value(r),
            Ok(Self::Diffs(d)) => serde_json::to_value(d),
            Ok(Self::Reset(e)) => serde_json::to_value(e),
            Ok(Self::Egress(e)) => serde_json::to_value(e),
            Ok(Self::Ramp(r)) => serde_json::to_value(r),
            Err(e) => return Response::error(e.kind, e.message),
        };
        match data {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(ErrorKind::Internal, format!("encode the answer: {e}")),
        }
    }

    /// Read the data of a successful response to `command` as its typed answer.
    pub fn decode(command: &Command, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match command {
            Command::Status
            | Command::Rate { .. }
            | Command::Pause { .. }
            | Command::Resume { .. }
            | Command::Reload => Self::Status(serde_json::from_value(data)?),
            Command::Stats => Self::Stats(serde_json::from_value(data)?),
            Command::Report => Self::Report(serde_json::from_value(data)?),
            Command::Diffs { .. } => Self::Diffs(serde_json::from_value(data)?),
            Command::Reset { .. } => Self::Reset(serde_json::from_value(data)?),
            Command::Egress { .. } | Command::EgressDetach { .. } => Self::Egress(serde_json::from_value(data)?),
            Command::Ramp { .. } => Self::Ramp(serde_json::from_value(data)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Verdict;

    /// A ramp at its second step that tripped and was resumed, as the daemon reports it.
    fn ramp_status() -> crate::ramp::RampStatus {
        use crate::ramp::{Guard, GuardStatus, RampStatus, Reason, State, Transition};
        RampStatus {
            rule: "api".into(),
            state: State::Paused,
            step: 1,
            steps: 6,
            rate_percent: 5.0,
            seconds_at_step: 12.5,
            pairs: 340,
            reason: "paused by an operator at step 2 (340 pairs)".into(),
            baseline_p99_ms: Some(41.87),
            guards: vec![GuardStatus {
                guard: Guard::Errors,
                n: 340,
                against: 3,
                reverse: 2,
                evidence: 0.25,
                trips_at: 480.0,
            }],
            last_transition: Some(Transition {
                from: State::Advancing,
                to: State::Paused,
                reason: Reason::Pause,
                step: 1,
                detail: "paused by an operator at step 2".into(),
                at_unix_ms: 1_700_000_000_000,
            }),
        }
    }

    #[test]
    fn ramp_json_has_the_documented_shape() {
        let v = serde_json::to_value(RampReply { rules: vec![ramp_status()] }).expect("json");
        let r = &v["rules"][0];
        assert_eq!(
            (&r["rule"], &r["state"], &r["step"], &r["rate_percent"]),
            (&"api".into(), &"paused".into(), &1.into(), &5.0.into())
        );
        assert_eq!(r["reason"], "paused by an operator at step 2 (340 pairs)");
        assert_eq!(r["guards"][0]["guard"], "errors");
        assert_eq!(r["last_transition"]["reason"], "pause");
        let trip = serde_json::to_value(crate::ramp::Reason::Trip(crate::ramp::Guard::Latency)).expect("json");
        assert_eq!(trip, "latency", "a trip's reason is its guard's name, as in the metric");
        let back: crate::ramp::Reason = serde_json::from_value(trip).expect("reads back");
        assert_eq!(back, crate::ramp::Reason::Trip(crate::ramp::Guard::Latency));
        assert!(serde_json::from_value::<crate::ramp::Reason>("nope".into()).is_err());
    }

    #[test]
    fn every_answer_reads_back_as_the_command_expects() {
        let finding = crate::egress::EgressFinding {
            rule: "orders".into(),
            destination: "10.0.0.9:443".into(),
            protocol: "tcp".into(),
            verdict: "refused".into(),
            attempts: 3,
            process: "curl (pid 7)".into(),
        };
        let report = DaemonReport {
            verdict: Verdict::Insufficient,
            rules: Vec::new(),
            pairs: Default::default(),
            egress: vec![finding],
        };
        let egress = crate::egress::EgressStatus {
            rules: vec![crate::egress::RuleEgress {
                rule: "orders".into(),
                mode: "enforce".into(),
                destinations: vec![crate::egress::DestinationSeen {
                    destination: "[fd00::1]:53".into(),
                    protocol: "udp".into(),
                    call: "sendmsg".into(),
                    verdict: "refused".into(),
                    attempts: 2,
                    first_seen_unix: 1.5,
                    last_seen_unix: 2.25,
                    pid: 9,
                    process: "dig".into(),
                }],
                ..Default::default()
            }],
        };
        for (command, reply) in [
            (Command::Status, Reply::Status(Box::default())),
            (Command::Rate { percent: 5.0, rule: None }, Reply::Status(Box::default())),
            (Command::Reload, Reply::Status(Box::default())),
            (Command::Stats, Reply::Stats(Box::default())),
            (Command::Report, Reply::Report(Box::new(report))),
            (Command::Diffs { endpoint: None }, Reply::Diffs(Vec::new())),
            (Command::Reset { rule: None }, Reply::Reset(Vec::new())),
            (Command::Egress { rule: None }, Reply::Egress(Box::new(egress.clone()))),
            (Command::EgressDetach { rule: "orders".into() }, Reply::Egress(Box::new(egress))),
            (
                Command::Ramp { rule: Some("api".into()), action: Some(crate::ramp::RampAction::Pause) },
                Reply::Ramp(RampReply { rules: vec![ramp_status()] }),
            ),
        ] {
            let r = Reply::into_response(Ok(reply.clone()));
            assert!(r.ok && r.error.is_none(), "{command:?}");
            let back = Reply::decode(&command, r.data.expect("data")).expect("decodes");
            assert_eq!(back, reply, "{command:?}");
        }
    }

    #[test]
    fn an_error_is_a_response_with_its_kind_and_message() {
        let r = Reply::into_response(Err(ErrorBody::new(ErrorKind::NoSuchRule, "no rule named 'x'")));
        assert!(!r.ok && r.data.is_none());
        assert_eq!(r.error, Some(ErrorBody::new(ErrorKind::NoSuchRule, "no rule named 'x'")));
        // A status answer is not a report.
        let status = Reply::into_response(Ok(Reply::Status(Box::default()))).data.expect("data");
        assert!(Reply::decode(&Command::Report, status).is_err());
    }
}
