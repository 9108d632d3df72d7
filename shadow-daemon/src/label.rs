//! Metric label values as types. Every reason, kind, role and outcome a metric is labelled with
//! is an enum defined once with its stable label (`labels!`), and the metric families hold the
//! enum itself: prometheus-client encodes it through [`EncodeLabelValue`], the ledger, the
//! summary and the reports read the same definition through its `as_str` (and serde), and no
//! label is ever spelled twice or parsed back from text.
//!
//! Labels are stable: extend, never rename.
//!
//! [`EncodeLabelValue`]: prometheus_client::encoding::EncodeLabelValue

/// `Display` and prometheus-client's `EncodeLabelValue` for a type with an `as_str(self)`: for
/// a label enum made of other label enums.
macro_rules! encode_label {
    ($name:ty) => {
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> ::std::result::Result<(), ::std::fmt::Error> {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}
pub(crate) use encode_label;

/// A label enum: each variant with its label text. Derives the comparisons and `Debug`,
/// and implements `Display`, `EncodeLabelValue` and serde (as the label text, so a report or
/// summary says what the metrics say), with `LABELS`, `COUNT`, `ALL` (every value in declaration
/// order: a family can create all its series at zero up front), `as_str` and `index` (the
/// position in `ALL`, for counters kept in arrays).
///
/// ```ignore
/// labels! {
///     /// How a replay failed.
///     pub enum Kind { Timeout = "timeout", Reset = "reset" }
/// }
/// ```
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code, reason = "not every label enum uses every helper")]
        impl $name {
            $vis const LABELS: &'static [&'static str] = &[$($label),+];
            $vis const COUNT: usize = Self::LABELS.len();
            $vis const ALL: [Self; Self::COUNT] = [$(Self::$variant),+];

            $vis const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $label ),+
                }
            }

            /// Position in [`ALL`](Self::ALL).
            $vis const fn index(self) -> usize {
                self as usize
            }
        }

        $crate::label::encode_label!($name);

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> ::std::result::Result<Self, D::Error> {
                let text = <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| <D::Error as ::serde::de::Error>::unknown_variant(&text, Self::LABELS))
            }
        }
    };
}

/// A label enum made of label enums whose labels are distinct (one family fed by two stages):
/// each variant wraps one, and the label is the wrapped one's.
macro_rules! label_union {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $variant:ident($inner:ty) ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $variant($inner) ),+
        }

        impl $name {
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant(l) => l.as_str() ),+
                }
            }
        }

        encode_label!($name);
    };
}

// Extraction: what the kernel handed over and the extraction stage made of it.

labels! {
    /// Why a message, or the bytes of a segment, did not make it out (the `reason` of
    /// `shadow_extraction_events` and of the extraction's `shadow_requests_dropped_total`).
    pub enum DropReason {
        /// Bytes of the message never arrived (kernel ring buffer full, or reordering beyond the
        /// window/timeout). Not used for sampling skips, which are expected.
        Gap = "gap",
        /// Head larger than `max_header_bytes`, more than `max_headers` fields, or an oversized
        /// chunked trailer section.
        OversizeHeaders = "oversize_headers",
        /// Request body larger than `max_body_bytes`.
        OversizeBody = "oversize_body",
        /// Not valid HTTP/1.x, or framing we must not guess (conflicting lengths, TE + CL, ...).
        ParseError = "parse_error",
        /// HTTP/2 prior knowledge or TLS on the service port: extraction ends for the flow.
        UnsupportedProtocol = "unsupported_protocol",
        /// A protocol switch (Upgrade request or 101 response): extraction ends for the direction.
        Upgrade = "upgrade",
        /// A CONNECT tunnel: extraction ends for the direction.
        Connect = "connect",
        /// The kernel could not copy a segment of the message.
        TruncatedCapture = "truncated_capture",
        /// The flow was evicted to stay under the memory cap or the flow limit.
        Evicted = "evicted",
        /// The flow went idle with the message unfinished.
        Timeout = "timeout",
        /// The connection closed (FIN or RST) before the message was complete.
        Incomplete = "incomplete",
        /// A response whose request was not captured (unsampled, dropped, or ambiguous pairing).
        UnpairedResponse = "unpaired_response",
        /// Segments only: bytes skipped while joining a stream that was already running (new flow,
        /// or after a sampling skip) until a message start.
        MidstreamSkip = "midstream_skip",
        /// Segments only: bytes already seen (retransmission, overlap) or after the stream ended.
        Duplicate = "duplicate",
        /// After a request-side framing error, or after a request that ends the connection
        /// (`Connection: close`, HTTP/1.0 without keep-alive), the rest of the connection's request
        /// stream: where the primary's next request starts (if anywhere) is not knowable from the
        /// bytes, so nothing is resynchronised on.
        Desync = "desync",
        /// The primary answered the request with a framing error (400, 413, 414, 431); or before it
        /// had the whole request, with anything but 2xx/3xx; or early with 2xx/3xx, and the
        /// connection did not then go on in step (an unpaired response, a pipelined answer out of
        /// order, a reset): the primary did not serve it as sent, so neither does the shadow.
        Refused = "refused",
        /// The primary's answer was never seen: the connection ended first, or a later request's
        /// response came first. Only what the primary answered is replayed (TC, where responses are
        /// captured).
        Unanswered = "unanswered",
    }
}

labels! {
    /// Why a ring-buffer record was not read (the `reason` of `shadow_extraction_events` with
    /// `direction="records"`).
    pub enum RecordDrop {
        /// Shorter than the header.
        Short = "short_record",
        /// Written by another version of the eBPF program.
        Version = "record_version",
        /// An address family or direction this daemon does not know.
        Bad = "bad_record",
        /// Claims more payload than it carries.
        Length = "record_length",
    }
}

label_union! {
    /// The `reason` label of `shadow_extraction_events`: why a message or segment was dropped, or
    /// why a record was not read.
    pub enum EventReason {
        Dropped(DropReason),
        Record(RecordDrop),
    }
}

labels! {
    /// The `direction` label of `shadow_extraction_events`: what was counted, and which way it
    /// went.
    pub enum Counted {
        /// Request messages.
        Requests = "request",
        /// Response messages.
        Responses = "response",
        RequestSegments = "request_segments",
        ResponseSegments = "response_segments",
        /// Ring-buffer records that did not decode.
        Records = "records",
    }
}

// Replay and the request ledger.

labels! {
    /// Why the replay stage did not replay a request (the `reason` of `shadow_requests_dropped_total`
    /// besides the extraction stage's [`DropReason`]s). Labels are stable: extend, never rename.
    pub enum RequestDrop {
        /// No rule with a shadow target covers the request's service port (capture-only rule).
        NoTarget = "no_target",
        MethodNotAllowed = "method_not_allowed",
        /// Matched a deny pattern.
        PathDenied = "path_denied",
        /// Allow patterns are configured and none matched.
        PathNotAllowed = "path_not_allowed",
        BodyTooLarge = "body_too_large",
        RateLimited = "rate_limited",
        QueueFull = "queue_full",
        /// Sent, but the shadow failed (see `shadow_errors_total{kind}` for which way).
        ShadowError = "shadow_error",
        /// The shadow target is backed off after consecutive failures: not sent, not queued.
        ShadowBackoff = "shadow_backoff",
        /// The shadow's response body passed the cap: the connection was closed.
        ShadowResponseTooLarge = "shadow_response_too_large",
        /// The captured request's spans did not describe a well-formed head: not replayed rather
        /// than repaired.
        InvalidCapture = "invalid_capture",
        /// Still queued or in flight when the daemon stopped.
        Shutdown = "shutdown",
        /// The rule's ramp is measuring the primary's baseline: captured and timed, deliberately
        /// not replayed.
        RampBaseline = "ramp_baseline",
    }
}

label_union! {
    /// A `reason` of `shadow_requests_dropped_total`: the extraction stage's or the replay stage's
    /// (their labels are distinct).
    pub enum Dropped {
        Extraction(DropReason),
        Replay(RequestDrop),
    }
}

labels! {
    /// How a replay to the shadow failed (`shadow_errors_total{kind}`).
    pub enum ShadowErrorKind {
        ConnectRefused = "connect_refused",
        /// Connecting or the whole exchange took longer than its timeout.
        Timeout = "timeout",
        /// The connection was reset or closed before the response was complete.
        Reset = "reset",
        /// The shadow answered with something that is not a followable HTTP/1.x response.
        BadResponse = "bad_response",
        /// Name resolution, unreachable network and anything else.
        Other = "other",
    }
}

labels! {
    /// How one exchange with a shadow target failed (`shadow_target_failures_total{kind}`). Every
    /// kind counts toward the target's backoff.
    pub enum TargetFailure {
        /// Nothing listens (the connection was refused).
        ConnectRefused = "connect_refused",
        /// No connection within the connect timeout.
        ConnectTimeout = "connect_timeout",
        /// Name resolution, unreachable network, and any other failure to connect.
        ConnectError = "connect_error",
        /// Connected, then reset (or the write failed).
        Reset = "reset",
        /// Connected, then closed before the response was complete.
        Closed = "closed",
        /// No complete response within the request timeout.
        Timeout = "timeout",
        /// An answer that is not a followable HTTP/1.x response.
        BadResponse = "bad_response",
        /// A response body past the cap: the connection was closed.
        ResponseTooLarge = "response_too_large",
    }
}

labels! {
    /// Which of a rule's targets: the shadow under test, or the secondary (a second copy of the
    /// primary's build, for noise learning). The `role` label.
    pub enum Role {
        Shadow = "shadow",
        Secondary = "secondary",
    }
}

// Latency and responses.

labels! {
    /// Which service answered (`side` of the latency histograms and the compared series).
    pub enum Side {
        Primary = "primary",
        Shadow = "shadow",
    }
}

labels! {
    /// A response's status class (`class` of `shadow_responses_total` and
    /// `shadow_compared_responses_total`); `error`: the shadow gave no response (compared series
    /// only).
    pub enum ResponseClass {
        Informational = "1xx",
        Success = "2xx",
        Redirection = "3xx",
        ClientError = "4xx",
        ServerError = "5xx",
        Error = "error",
    }
}

impl ResponseClass {
    /// The classes of a status code: every variant but `Error`.
    pub const STATUS: [Self; 5] =
        [Self::Informational, Self::Success, Self::Redirection, Self::ClientError, Self::ServerError];

    /// The class of `status`; anything outside 100..=499 counts as 5xx.
    pub const fn of(status: u16) -> Self {
        match status {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

// Operating the daemon.

labels! {
    /// Interfaces coming and going (`shadow_interface_events_total{event}`).
    pub enum InterfaceEvent {
        Attached = "attached",
        Detached = "detached",
        /// An interface appeared and attaching to it failed.
        AttachFailed = "attach_failed",
    }
}

labels! {
    /// The trace-context formats of a replayed request (`shadow_trace_contexts_total{format}`),
    /// in the order the diffs pick the one they link to.
    pub enum TraceFormat {
        /// W3C Trace Context `traceparent`.
        TraceParent = "traceparent",
        /// W3C Trace Context `tracestate` (the link back to the production trace).
        TraceState = "tracestate",
        /// Zipkin B3, single header `b3`.
        B3 = "b3",
        /// Zipkin B3, `X-B3-TraceId` / `X-B3-SpanId` / `X-B3-ParentSpanId` (/ `X-B3-Sampled`).
        B3Multi = "b3multi",
        /// Jaeger `uber-trace-id`.
        Jaeger = "jaeger",
        /// Datadog `x-datadog-trace-id` / `x-datadog-parent-id` / `x-datadog-tags`.
        Datadog = "datadog",
        /// AWS X-Ray `X-Amzn-Trace-Id`.
        XRay = "xray",
        /// Google `X-Cloud-Trace-Context`.
        CloudTrace = "cloud_trace",
        /// Apache SkyWalking `sw8`.
        Sw8 = "sw8",
        /// W3C Baggage `baggage` (the shadow marker).
        Baggage = "baggage",
    }
}

labels! {
    /// What the replay did to a request's trace context of one format
    /// (`shadow_trace_contexts_total{action}`).
    pub enum TraceAction {
        /// Fresh ids of the same format (`tracestate`: replaced by the link).
        Restarted = "restarted",
        /// Left as captured (`--trace keep`).
        Kept = "kept",
        /// Not understood (or, for `tracestate`, no restarted `traceparent` to link): removed,
        /// never replayed with its production ids.
        Removed = "removed",
        /// The shadow marker was added to `baggage`.
        Marked = "marked",
        /// The marker would have passed the W3C limits (64 members, 8192 bytes): not added.
        BaggageFull = "baggage_full",
    }
}

labels! {
    /// How a config reload ended (`shadow_config_reloads_total{result}`).
    pub enum ReloadResult {
        Applied = "applied",
        /// Invalid: the running config stays.
        Refused = "refused",
    }
}

// The control socket.

labels! {
    /// Why a control request failed: the wire's `kind` and `shadow_control_errors_total{kind}`
    /// (`control::ErrorKind`).
    pub enum ControlErrorKind {
        /// Not a JSON request object, unknown command or field.
        BadRequest = "bad_request",
        /// Another protocol version.
        Version = "version",
        /// The line exceeded `control::MAX_LINE`.
        TooLarge = "too_large",
        /// No complete line within `control::READ_TIMEOUT`.
        Timeout = "timeout",
        /// The peer's uid is neither root nor the daemon's.
        Refused = "refused",
        /// Too many connections at once.
        Busy = "busy",
        /// A well-formed request with a value out of range (`rate 101`).
        InvalidArgument = "invalid_argument",
        NoSuchRule = "no_such_rule",
        /// The daemon refused the request (an invalid config on reload, ...).
        Rejected = "rejected",
        Internal = "internal",
    }
}

// Comparison.

labels! {
    /// How one compared pair came out (`shadow_comparisons_total{outcome}`, and the report's).
    pub enum Outcome {
        Match = "match",
        /// Status equal, bodies compared by length only, and the lengths equal.
        MatchLengthOnly = "match_length_only",
        StatusMismatch = "status_mismatch",
        BodyMismatch = "body_mismatch",
        /// Bodies compared by length only, and the lengths differ.
        LengthMismatch = "length_mismatch",
        HeaderMismatch = "header_mismatch",
        ShadowFailed = "shadow_failed",
    }
}

labels! {
    /// Why a replayed request never became a compared pair (the report's, and with
    /// [`NotCompared`] the `reason` of `shadow_compare_unpaired_total`).
    pub enum UnpairedReason {
        /// The primary's response was not captured (gap, truncation, connection closed).
        PrimaryMissing = "primary_missing",
        /// The pair waited too long or the pending-pair memory bound evicted it.
        MemoryBound = "memory_bound",
    }
}

labels! {
    /// Why an epoch started: the `reason` label of `shadow_compare_epochs_total`, and the report's.
    pub enum EpochReason {
        /// The daemon started comparing the rule.
        Start = "start",
        /// The rule's shadow target changed (a reload).
        Target = "target",
        /// `shadowctl reset`.
        Reset = "reset",
        /// The shadow answered with another value of the rule's `version_header`.
        Version = "version",
        /// A reload changed the rules' names or comparison settings: every rule compares anew.
        Reload = "reload",
    }
}

labels! {
    /// Why a primary response was not compared (`shadow_compare_primary_uncompared_total`).
    pub enum Uncompared {
        /// Its request was not replayed (dropped, or sampled out by the replay's controls).
        NotReplayed = "not_replayed",
        /// Its request was replayed and the shadow's half never came.
        ShadowMissing = "shadow_missing",
    }
}

labels! {
    /// What became of a secondary's response (`shadow_compare_secondary_total{reason}`).
    pub enum SecondaryOutcome {
        /// Paired with the primary's: what differs was learned as noise.
        Learned = "learned",
        /// The secondary gave no response.
        Failed = "failed",
        /// Its primary's response never came.
        Unpaired = "unpaired",
        /// It came back in a later epoch of its rule than it was sent in: dropped.
        Epoch = "epoch",
    }
}

/// Why a replayed request was not compared (`shadow_compare_unpaired_total{reason}`): its pair's
/// own reason, or `epoch`, its shadow request having gone out in an earlier epoch of its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotCompared {
    Unpaired(UnpairedReason),
    Epoch,
}

impl NotCompared {
    pub const ALL: [Self; UnpairedReason::COUNT + 1] =
        [Self::Unpaired(UnpairedReason::PrimaryMissing), Self::Unpaired(UnpairedReason::MemoryBound), Self::Epoch];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unpaired(r) => r.as_str(),
            Self::Epoch => "epoch",
        }
    }
}

encode_label!(NotCompared);

/// Checks a label type's `LABELS`: every label distinct, non-empty snake_case (what Prometheus
/// and the rules and dashboards written against them can rely on). For tests.
#[cfg(test)]
pub(crate) fn check(labels: &[&str]) {
    let mut seen = std::collections::HashSet::new();
    for &s in labels {
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "not a snake_case label: {s:?}"
        );
        assert!(seen.insert(s), "label {s:?} given twice");
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::{EncodeLabelSet, text::encode},
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    use super::*;

    labels! {
        /// For the test.
        enum Colour {
            /// Documented.
            DarkRed = "dark_red",
            Blue = "blue",
        }
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ColourLabels {
        colour: Colour,
    }

    #[test]
    fn a_label_enum_encodes_as_its_label_everywhere() {
        check(Colour::LABELS);
        assert_eq!(Colour::ALL, [Colour::DarkRed, Colour::Blue]);
        assert_eq!((Colour::COUNT, Colour::Blue.index()), (2, 1));
        assert_eq!(format!("{} {}", Colour::DarkRed, Colour::Blue), "dark_red blue");
        let family = Family::<ColourLabels, Counter>::default();
        family.get_or_create(&ColourLabels { colour: Colour::DarkRed }).inc_by(3);
        let mut registry = Registry::default();
        registry.register("paint", "Paint", family);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("paint_total{colour=\"dark_red\"} 3"), "{text}");
    }

    #[test]
    fn a_label_enum_reads_and_writes_as_its_label() {
        assert_eq!(serde_json::to_string(&[Colour::DarkRed, Colour::Blue]).expect("json"), r#"["dark_red","blue"]"#);
        assert_eq!(serde_json::from_str::<Colour>(r#""dark_red""#).expect("known"), Colour::DarkRed);
        let e = serde_json::from_str::<Colour>(r#""DarkRed""#).expect_err("not a label");
        assert!(e.to_string().contains("unknown variant `DarkRed`, expected `dark_red` or `blue`"), "{e}");
        let map: std::collections::BTreeMap<Colour, u64> = [(Colour::Blue, 2)].into();
        assert_eq!(serde_json::to_string(&map).expect("json"), r#"{"blue":2}"#);
    }

    /// Every label type of the daemon, and the unions of two of them that share one label
    /// (a label given by both halves of a union would merge two reasons into one series).
    #[test]
    fn every_label_type_is_distinct_snake_case() {
        check(DropReason::LABELS);
        check(RecordDrop::LABELS);
        check(Counted::LABELS);
        check(RequestDrop::LABELS);
        check(ShadowErrorKind::LABELS);
        check(TargetFailure::LABELS);
        check(Role::LABELS);
        check(ControlErrorKind::LABELS);
        check(Side::LABELS);
        check(ResponseClass::LABELS);
        check(InterfaceEvent::LABELS);
        check(ReloadResult::LABELS);
        check(TraceFormat::LABELS);
        check(TraceAction::LABELS);
        check(Outcome::LABELS);
        check(UnpairedReason::LABELS);
        check(EpochReason::LABELS);
        check(Uncompared::LABELS);
        check(SecondaryOutcome::LABELS);
        let distinct = |labels: Vec<&'static str>| {
            let set: std::collections::HashSet<_> = labels.iter().collect();
            assert_eq!(set.len(), labels.len(), "{labels:?}");
        };
        let dropped = DropReason::ALL.map(Dropped::Extraction).into_iter().chain(RequestDrop::ALL.map(Dropped::Replay));
        distinct(dropped.map(Dropped::as_str).collect());
        let events =
            DropReason::ALL.map(EventReason::Dropped).into_iter().chain(RecordDrop::ALL.map(EventReason::Record));
        distinct(events.map(EventReason::as_str).collect());
        distinct(NotCompared::ALL.map(NotCompared::as_str).to_vec());
        assert_eq!(NotCompared::ALL.map(NotCompared::as_str), ["primary_missing", "memory_bound", "epoch"]);
        assert_eq!(Dropped::Extraction(DropReason::Gap).to_string(), "gap");
        assert_eq!(EventReason::Record(RecordDrop::Short).to_string(), "short_record");
    }

    #[test]
    fn a_status_has_one_class() {
        for (status, class) in
            [(100, "1xx"), (204, "2xx"), (399, "3xx"), (400, "4xx"), (499, "4xx"), (500, "5xx"), (0, "5xx")]
        {
            assert_eq!(ResponseClass::of(status).as_str(), class, "{status}");
        }
        assert!(!ResponseClass::STATUS.contains(&ResponseClass::Error));
        assert_eq!(ResponseClass::STATUS.len() + 1, ResponseClass::COUNT);
    }

    #[test]
    #[should_panic(expected = "given twice")]
    fn check_finds_a_label_given_twice() {
        labels! {
            enum Twice { A = "same", B = "same" }
        }
        check(Twice::LABELS);
    }

    #[test]
    #[should_panic(expected = "Upper")]
    fn check_finds_a_label_not_in_snake_case() {
        labels! {
            enum Upper { A = "Upper" }
        }
        check(Upper::LABELS);
    }
}
