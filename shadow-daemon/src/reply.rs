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
